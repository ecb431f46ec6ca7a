"""The package as installed: committed stubs match proto/, typing marker shipped."""

import filecmp
import importlib.metadata
import importlib.util
import os
import pathlib

import pytest

import ringattn

SOURCE = pathlib.Path(os.environ.get("RINGATTN_SOURCE_DIR",
                                     pathlib.Path(__file__).resolve().parents[3]))
PACKAGE = SOURCE / "client" / "python"


def load_gen_protos():
    spec = importlib.util.spec_from_file_location("gen_protos", PACKAGE / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_the_protos(tmp_path):
    gen = load_gen_protos()
    try:
        have = importlib.metadata.version("grpcio-tools")
    except importlib.metadata.PackageNotFoundError:
        have = None
    if have != gen.GRPCIO_TOOLS_VERSION:
        if os.environ.get("RINGATTN_EXPECT_INSTALLED"):
            pytest.fail(f"grpcio-tools=={gen.GRPCIO_TOOLS_VERSION} is missing (found {have})")
        pytest.skip(f"needs grpcio-tools=={gen.GRPCIO_TOOLS_VERSION}")
    fresh = gen.generate(tmp_path)
    committed = sorted(p.relative_to(gen.PACKAGE_DIR)
                       for p in gen.PACKAGE_DIR.rglob("*.py*") if "__pycache__" not in p.parts)
    assert committed == fresh, "stub files differ: run client/python/gen_protos.py"
    stale = [str(rel) for rel in fresh
             if not filecmp.cmp(tmp_path / rel, gen.PACKAGE_DIR / rel, shallow=False)]
    assert not stale, f"stubs out of date with proto/ ({stale}): run client/python/gen_protos.py"


@pytest.mark.skipif(not os.environ.get("RINGATTN_EXPECT_INSTALLED"),
                    reason="runs against the wheel the test fixture installs")
def test_runs_from_the_installed_wheel():
    installed = pathlib.Path(ringattn.__file__).resolve().parent
    assert "site-packages" in installed.parts, installed
    assert (installed / "py.typed").is_file()
    assert (installed / "_proto" / "attention" / "v1" / "attention_service_pb2.pyi").is_file()
    # The wheel is today's source, not a stale build.
    for source in (PACKAGE / "src" / "ringattn").rglob("*.py"):
        rel = source.relative_to(PACKAGE / "src" / "ringattn")
        assert filecmp.cmp(source, installed / rel, shallow=False), rel
    requires = importlib.metadata.requires("ringattn")
    assert any(r.startswith("grpcio") for r in requires)
    assert any(r.startswith("torch") and "extra ==" in r for r in requires)
