"""The Dockerfile and the scripts the image runs. No container engine is
needed: the Dockerfile is linted (hadolint) and checked for its structure;
the entry point, health check and library collection run here, against
stand-in programs and, when CTest gives RINGATTN_BIN_DIR, the real daemons."""

import os
import re
import signal
import socket
import stat
import subprocess
import time

import pytest

from conftest import REPO, tool

DOCKER = REPO / "deploy" / "docker"
PORTS = {"50051", "50052", "9464", "9465"}


def instructions():
    """The Dockerfile as (INSTRUCTION, arguments) with continuations joined."""
    out, pending = [], ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue  # A comment inside a continued instruction.
        pending += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def stages():
    result = []
    for word, rest in instructions():
        if word == "FROM":
            result.append({"from": rest, "steps": []})
        elif result:
            result[-1]["steps"].append((word, rest))
    return result


def test_hadolint_passes():
    r = subprocess.run([tool("hadolint"), str(REPO / "Dockerfile")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_builds_on_cuda_devel_and_runs_on_the_matching_cuda_runtime():
    s = stages()
    assert len(s) == 2
    build, runtime = s
    assert re.fullmatch(r"nvidia/cuda:\$\{CUDA_VERSION\}-devel-ubuntu\$\{UBUNTU_VERSION\} AS build",
                        build["from"]), build["from"]
    assert re.fullmatch(r"nvidia/cuda:\$\{CUDA_VERSION\}-runtime-ubuntu\$\{UBUNTU_VERSION\} AS "
                        r"runtime", runtime["from"]), runtime["from"]
    args = [rest for word, rest in instructions()[:2] if word == "ARG"]
    assert any(a.startswith("CUDA_VERSION=") for a in args)
    assert any(a.startswith("UBUNTU_VERSION=") for a in args)
    # The runtime stage installs no toolchain: it copies the build's output.
    run = " ".join(rest for word, rest in runtime["steps"] if word == "RUN")
    assert "apt-get install" not in run
    copies = [rest for word, rest in runtime["steps"] if word == "COPY"]
    assert any(c.startswith("--from=build /opt/ringattn") for c in copies)


def test_build_stage_configures_release_without_tests_and_builds_the_three_programs():
    (build, _) = stages()
    run = " ".join(rest for word, rest in build["steps"] if word == "RUN")
    assert "cmake --preset release" in run
    assert "-DRINGATTN_BUILD_TESTS=OFF" in run and "-DRINGATTN_BUILD_BENCH=OFF" in run
    targets = re.search(r"--target ((?:[\w-]+ ?)+)", run).group(1).split()
    cmake = "".join(p.read_text() for p in REPO.rglob("CMakeLists.txt")
                    if "build" not in p.relative_to(REPO).parts)
    outputs = {}
    for t in targets:
        assert re.search(rf"add_executable\({t}\b", cmake), f"no target {t}"
        m = re.search(rf"set_target_properties\({t} PROPERTIES OUTPUT_NAME ([\w-]+)", cmake)
        outputs[t] = m.group(1)
    assert sorted(outputs.values()) == ["ringattn", "ringattn-coordinator", "ringattn-worker"]
    for name in outputs.values():
        assert f"build/release/bin/{name}" in run


def test_build_stage_installs_the_libraries_the_project_links():
    """Every -dev library scripts/setup_deps.sh installs for the service (not
    the test-only ones) is installed in the build stage too."""
    setup = (REPO / "scripts" / "setup_deps.sh").read_text()
    listed = set(re.findall(r"\b(lib[\w+.-]+-dev|prometheus-cpp-dev|protobuf-compiler(?:-grpc)?)\b",
                            setup))
    test_only = {"libgtest-dev", "libgmock-dev", "libbenchmark-dev"}
    (build, _) = stages()
    run = " ".join(rest for word, rest in build["steps"] if word == "RUN")
    missing = sorted(p for p in listed - test_only if p not in run.split())
    assert not missing, f"the image's build stage lacks {missing}"


def test_runtime_runs_as_an_unprivileged_user_with_health_check_and_ports():
    (_, runtime) = stages()
    steps = runtime["steps"]
    users = [rest for word, rest in steps if word == "USER"]
    assert users, "no USER in the runtime stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert uid == "10001"  # The chart's runAsUser.
    run = " ".join(rest for word, rest in steps if word == "RUN")
    assert f"--uid {uid}" in run
    (health,) = [rest for word, rest in steps if word == "HEALTHCHECK"]
    assert re.search(r'CMD \["/usr/local/bin/ringattn-healthcheck"\]', health)
    exposed = set(" ".join(rest for word, rest in steps if word == "EXPOSE").split())
    assert exposed == PORTS
    (entry,) = [rest for word, rest in steps if word == "ENTRYPOINT"]
    assert entry == '["/usr/local/bin/ringattn-entrypoint"]'
    # Every file the image copies from the context exists, and scripts are executable.
    for word, rest in steps:
        if word == "COPY" and not rest.startswith("--from"):
            src = REPO / rest.split()[0]
            assert src.exists(), src
            assert src.stat().st_mode & stat.S_IXUSR, src


def test_dockerignore_keeps_build_outputs_out_of_the_context():
    lines = (REPO / ".dockerignore").read_text().split()
    assert "build/" in lines
    assert ".git/" in lines


# --- The entry point ---------------------------------------------------------

@pytest.fixture
def stubs(tmp_path):
    """A PATH whose ringattn programs and `hostname` print what they were given."""
    d = tmp_path / "bin"
    d.mkdir()
    for name in ("ringattn-coordinator", "ringattn-worker", "ringattn", "ringattn-healthcheck"):
        f = d / name
        f.write_text(f'#!/bin/sh\necho {name}; for a in "$@"; do echo "$a"; done\n')
        f.chmod(0o755)
    h = d / "hostname"
    h.write_text('#!/bin/sh\n[ "$1" = -i ] && echo "10.1.2.3 fd00::3"\n')
    h.chmod(0o755)
    return d


def entrypoint(stubs, *args, env=None):
    e = {"PATH": f"{stubs}:/usr/bin:/bin"}
    e.update(env or {})
    r = subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), *args], capture_output=True,
                       text=True, env=e, timeout=30)
    return r.returncode, r.stdout.splitlines()


def test_entrypoint_starts_the_coordinator_on_every_interface(stubs):
    rc, out = entrypoint(stubs, "coordinator", "--cp=2", "--port=7000")
    assert rc == 0
    assert out == ["ringattn-coordinator", "--host=0.0.0.0", "--port=50051",
                   "--advertise_host=10.1.2.3", "--cp=2", "--port=7000"]


def test_entrypoint_starts_a_worker_on_the_container_address(stubs):
    rc, out = entrypoint(stubs, "worker", "--coordinator=c:50051")
    assert rc == 0
    assert out == ["ringattn-worker", "--host=10.1.2.3", "--port=50052", "--coordinator=c:50051"]
    rc, out = entrypoint(stubs, "worker", env={"RINGATTN_HOST": "w0", "RINGATTN_PORT": "6000"})
    assert out == ["ringattn-worker", "--host=w0", "--port=6000"]


def test_entrypoint_runs_the_cli_help_and_other_commands(stubs):
    assert entrypoint(stubs, "ringattn", "status", "--coordinator=c:1")[1] == [
        "ringattn", "status", "--coordinator=c:1"]
    assert entrypoint(stubs, "healthcheck")[1] == ["ringattn-healthcheck"]
    rc, out = entrypoint(stubs)
    assert rc == 0 and out[0].startswith("usage:")
    assert entrypoint(stubs, "echo", "hi") == (0, ["hi"])
    assert entrypoint(stubs, "false")[0] != 0


# --- The health check --------------------------------------------------------

def healthcheck(cmdline, path, timeout="3"):
    f = path / "cmdline"
    f.write_bytes(b"\0".join(a.encode() for a in cmdline) + b"\0")
    env = {"PATH": f"{path}:/usr/bin:/bin", "RINGATTN_HEALTH_CMDLINE": str(f),
           "RINGATTN_HEALTH_TIMEOUT": timeout}
    return subprocess.run(["bash", str(DOCKER / "healthcheck.sh")], capture_output=True,
                          text=True, env=env, timeout=30)


@pytest.fixture
def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_healthcheck_asks_the_coordinator_for_its_status(tmp_path):
    log = tmp_path / "calls"
    cli = tmp_path / "ringattn"
    cli.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexit "${{STUB_RC:-0}}"\n')
    cli.chmod(0o755)
    r = healthcheck(["/opt/ringattn/bin/ringattn-coordinator", "--host=0.0.0.0", "--port=50051",
                     "--cp=2", "--port=7001"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert log.read_text().split() == ["status", "--coordinator=127.0.0.1:7001"]
    cli.write_text("#!/bin/sh\nexit 1\n")
    r = healthcheck(["ringattn-coordinator", "--port=7001"], tmp_path)
    assert r.returncode != 0


def test_healthcheck_connects_to_the_worker_port_from_flags_and_flag_files(tmp_path, listener):
    flagfile = tmp_path / "worker.flags"
    flagfile.write_text(f"# the chart's flags\n\n  --port={listener}  \n--threads=2\n")
    ok = healthcheck(["ringattn-worker", "--host=127.0.0.1", f"--port={closed_port()}",
                      f"--flagfile={flagfile}"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    # A flag after the flag file wins, as it does for the daemon.
    down = healthcheck(["ringattn-worker", "--host=127.0.0.1", f"--flagfile={flagfile}",
                        f"--port={closed_port()}"], tmp_path)
    assert down.returncode != 0
    # No port known (ephemeral): unhealthy rather than guessing.
    assert healthcheck(["ringattn-worker", "--port=0"], tmp_path).returncode != 0


def test_healthcheck_refuses_other_programs(tmp_path):
    r = healthcheck(["/bin/sleep", "100"], tmp_path)
    assert r.returncode != 0 and "not a ringattn daemon" in r.stderr


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _metrics_flags(binary):
    """--metrics_port=0 where the daemon has the flag, so tests share no fixed port."""
    r = subprocess.run([str(binary), "--helpfull"], capture_output=True, text=True, timeout=30)
    return ["--metrics_port=0"] if "metrics_port" in r.stdout + r.stderr else []


def _stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_healthcheck_against_live_daemons(bin_dir, tmp_path):
    coord_bin, worker_bin = bin_dir / "ringattn-coordinator", bin_dir / "ringattn-worker"
    port_file = tmp_path / "port"
    coord = subprocess.Popen([str(coord_bin), "--host=127.0.0.1", "--port=0", "--cp=1",
                              f"--port_file={port_file}", *_metrics_flags(coord_bin)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        deadline = time.time() + 60
        while not port_file.exists() and time.time() < deadline and coord.poll() is None:
            time.sleep(0.1)
        assert port_file.exists(), "the coordinator did not start"
        port = int(port_file.read_text())
        path = tmp_path / "path"
        path.mkdir()
        (path / "ringattn").symlink_to(bin_dir / "ringattn")
        r = healthcheck([str(coord_bin), "--host=0.0.0.0", f"--port={port}"], path, timeout="20")
        assert r.returncode == 0, r.stderr

        wport = _free_port()
        worker = subprocess.Popen([str(worker_bin), f"--coordinator=127.0.0.1:{port}",
                                   "--host=127.0.0.1", f"--port={wport}", "--threads=1",
                                   *_metrics_flags(worker_bin)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        args = [str(worker_bin), "--host=127.0.0.1", f"--port={wport}"]
        deadline = time.time() + 60
        while healthcheck(args, path).returncode != 0 and time.time() < deadline:
            assert worker.poll() is None, "the worker exited"
            time.sleep(0.2)
        assert healthcheck(args, path).returncode == 0

        _stop(worker)
        assert healthcheck(args, path).returncode != 0
        _stop(coord)
        r = healthcheck([str(coord_bin), f"--port={port}"], path, timeout="20")
        assert r.returncode != 0
    finally:
        if worker is not None:
            _stop(worker)
        _stop(coord)


# --- Runtime libraries ---------------------------------------------------------

def test_collected_binaries_run_with_only_the_collected_libraries(bin_dir, tmp_path):
    dest = tmp_path / "opt"
    names = ["ringattn-coordinator", "ringattn-worker", "ringattn"]
    r = subprocess.run(["sh", str(DOCKER / "collect-runtime-libs.sh"), str(dest),
                        *(str(bin_dir / n) for n in names)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (dest / "bin").iterdir()) == sorted(names)
    libs = {p.name for p in (dest / "lib").iterdir()}
    assert any(n.startswith("libgrpc++.so") for n in libs)
    assert any(n.startswith("libprotobuf.so") for n in libs)
    # The C library and C++ runtime come from the base image, never from here.
    assert not any(re.match(r"(libc|libm|libstdc\+\+|libgcc_s|ld-linux.*)\.so", n) for n in libs)
    env = dict(os.environ, LD_LIBRARY_PATH=str(dest / "lib"))
    for n in names:
        ldd = subprocess.run(["ldd", str(dest / "bin" / n)], capture_output=True, text=True,
                             env=env, timeout=60).stdout
        grpc_line = next(line for line in ldd.splitlines() if "libgrpc++.so" in line)
        assert str(dest / "lib") in grpc_line, grpc_line
        v = subprocess.run([str(dest / "bin" / n), "--version"], capture_output=True, env=env,
                           timeout=60)
        assert v.returncode == 0, n
