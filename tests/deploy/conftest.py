"""What the deployment tests share: the repository root, the chart
rendered by Helm's own engine, and the tools the tests run."""

import os
import pathlib
import shutil
import sys

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "ringattn"
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

# Every tool is installed by scripts/setup_deps.sh; a missing one is a
# failure, not a skip, so a broken install never passes as green.
YAMLLINT_CONFIG = ("{extends: default, rules: {line-length: {max: 160}, "
                   "indentation: {spaces: consistent, indent-sequences: whatever}, "
                   "document-start: disable, truthy: {check-keys: false}}}")


def tool(name):
    path = shutil.which(name)
    assert path, f"{name} is not installed (scripts/setup_deps.sh installs it)"
    return path


@pytest.fixture(scope="session")
def repo_root():
    return REPO


@pytest.fixture(scope="session")
def bin_dir():
    """The built daemons, when CTest says where they are."""
    d = os.environ.get("RINGATTN_BIN_DIR")
    if not d or not os.path.exists(os.path.join(d, "ringattn-coordinator")):
        pytest.skip("RINGATTN_BIN_DIR does not hold the built daemons")
    return pathlib.Path(d)


def render(values=None, name="demo", namespace="ml"):
    """Renders the chart with Helm's engine: {template path: manifest text}."""
    import helm_python  # Helm's Go SDK through its C ABI (PyPI helm-python-sdk).

    with helm_python.Chart.load(str(CHART)) as chart:
        return chart.render(values or {}, name=name, namespace=namespace)


def manifests(rendered):
    """The Kubernetes objects of a render, NOTES.txt left out."""
    objs = []
    for path, text in sorted(rendered.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        objs.extend(d for d in yaml.safe_load_all(text) if d)
    return objs


def find(objs, kind, suffix=""):
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"expected one {kind} named *{suffix}, got {len(found)}"
    return found[0]
