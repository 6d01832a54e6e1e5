"""Running deploy/ansible for real on this machine (``make deploy-test``).

Every inventory host is this machine through Ansible's local connection, with its own
ports and directories under a temporary root (``hosts/NAME/{opt,etc,data,log,run}``) and
its own virtualenv; services run under pairq-supervise (``pairq_common_supervisor:
process``), since the test machine has no systemd. ``pairq_common_machine`` names two
pretend machines so the pair preflight (two brokers on distinct machines) holds.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "deploy" / "ansible"
LOOKUPS = ("lookup-1",)
PAIRS = {"p1": ("broker-1a", "broker-1b"), "p2": ("broker-2a", "broker-2b")}
BROKERS = tuple(h for pair in PAIRS.values() for h in pair)
ADMINS = ("admin-1",)
ALL = LOOKUPS + BROKERS + ADMINS


def ansible_bin(name: str) -> str:
    """An Ansible command: next to this interpreter (the test extra), or PAIRQ_ANSIBLE_BIN."""
    d = os.environ.get("PAIRQ_ANSIBLE_BIN") or str(Path(sys.executable).parent)
    path = Path(d) / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            raise RuntimeError(f"{name} not found in {d} or on PATH: pip install '.[test]'")
        return found
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_wheel(source: Path, out: Path) -> Path:
    """``pip wheel --no-deps`` of a source tree; the wheel's path."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (wheel,) = out.glob("pairq-*.whl")
    return wheel


def wheelhouse(wheel: Path, out: Path) -> Path:
    """The wheel's dependencies as wheels (one download, then reused from REPO/build)."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "-w",
            str(out),
            "--find-links",
            str(out),
            str(wheel),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for w in out.glob("pairq-*.whl"):
        w.unlink()
    return out


def base_revision() -> str:
    """The commit to upgrade from: PAIRQ_DEPLOY_BASE, else the parent of the newest commit
    that changed pairq/ (so the upgrade really changes the code)."""
    env = os.environ.get("PAIRQ_DEPLOY_BASE")
    if env:
        return env
    out = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%H", "--", "pairq"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"{out}^"


def export_tree(rev: str, dest: Path) -> Path:
    """``git archive REV`` unpacked into dest."""
    data = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev], check=True, capture_output=True
    ).stdout
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


@dataclass
class Deployment:
    """A local inventory under root and the playbook runs against it."""

    root: Path
    wheel: Path
    wheels: Path
    head_wheel: Path | None = None
    ports: dict[str, int] = field(default_factory=dict)
    gossip_key: str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
    # TLS on every process (one certificate for 127.0.0.1, signed by a test CA) and a
    # secret per pair: the roles must wire both into every service they render.
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""

    def make_tls(self) -> None:
        from tests.integration.certs import CA

        self._ca = CA(self.root / "tls")
        self.renew_tls()
        self.tls_ca = self._ca.path

    def renew_tls(self) -> None:
        """A new certificate and key from the same CA, at the same controller paths."""
        node = self._ca.issue("pairq-node", days=2)
        self.tls_cert, self.tls_key = node.cert, node.key

    def served_serial(self, address: str) -> int:
        """The serial number of the certificate the TLS server at ``address`` presents."""
        import ssl

        from cryptography import x509

        ctx = ssl.create_default_context(cafile=self.tls_ca)
        ctx.set_alpn_protocols(["h2"])
        host, port = address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number

    @staticmethod
    def pair_secret(pair: str) -> str:
        return f"deploy-test-secret-of-{pair}-0123456789"

    def host_root(self, host: str) -> Path:
        return self.root / "hosts" / host

    def addr(self, key: str) -> str:
        if key not in self.ports:
            self.ports[key] = free_port()
        return f"127.0.0.1:{self.ports[key]}"

    @property
    def lookup_addresses(self) -> list[str]:
        return [self.addr(f"{h}/grpc") for h in LOOKUPS]

    def broker_address(self, host: str) -> str:
        return self.addr(f"{host}/grpc")

    def write_inventory(self) -> Path:
        hosts: dict[str, dict[str, object]] = {}
        for h in ALL:
            r = self.host_root(h)
            hosts[h] = {
                "pairq_common_prefix": str(r / "opt"),
                "pairq_common_config_dir": str(r / "etc"),
                "pairq_common_data_root": str(r / "data"),
                "pairq_common_log_dir": str(r / "log"),
                "pairq_common_run_dir": str(r / "run"),
            }
        for h in LOOKUPS:
            hosts[h] |= {
                "pairq_lookup_address": self.addr(f"{h}/grpc"),
                "pairq_lookup_gossip_address": self.addr(f"{h}/gossip"),
            }
        for pair, members in PAIRS.items():
            for side, h in zip("ab", members, strict=True):
                hosts[h] |= {
                    "pairq_broker_pair": pair,
                    "pairq_broker_address": self.addr(f"{h}/grpc"),
                    "pairq_broker_gossip_address": self.addr(f"{h}/gossip"),
                    "pairq_common_machine": f"machine-{side}",
                    "pairq_broker_shutdown_grace_s": 3.0,
                    "pairq_broker_health_timeout_s": 90,
                }
        for h in ADMINS:
            hosts[h] |= {
                "pairq_admin_address": self.addr(f"{h}/http"),
                # a key of pairq admin's own (not a role variable): reaches the console
                # through its TOML file, checked by --check-config
                "pairq_admin_options": {"poll_interval": 0.5},
            }
        inventory = {
            "all": {
                "vars": {
                    "ansible_connection": "local",
                    "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                    "pairq_become": False,
                    "pairq_common_manage_user": False,
                    "pairq_common_supervisor": "process",
                    "pairq_common_python": str(Path(sys.base_prefix) / "bin" / "python3"),
                    "pairq_common_install_source": "wheel",
                    "pairq_common_wheel": str(self.wheel),
                    "pairq_common_pip_extra_args": f"--no-index --find-links {self.wheels} --no-compile",
                    "pairq_common_gossip_profile": "local",
                    "pairq_common_gossip_keys": [self.gossip_key],
                    "pairq_common_gossip_label": "deploy-test",
                    **(
                        {
                            "pairq_common_tls_enabled": True,
                            "pairq_common_tls_cert_src": self.tls_cert,
                            "pairq_common_tls_key_src": self.tls_key,
                            "pairq_common_tls_ca_src": self.tls_ca,
                        }
                        if self.tls_ca
                        else {}
                    ),
                },
                "children": {
                    "pairq_lookups": {"hosts": {h: hosts[h] for h in LOOKUPS}},
                    "pairq_brokers": {
                        "children": {
                            f"pair_{p}": {
                                "hosts": {h: hosts[h] for h in m},
                                "vars": {"pairq_common_pair_secret": self.pair_secret(p)},
                            }
                            for p, m in PAIRS.items()
                        }
                    },
                    "pairq_admins": {"hosts": {h: hosts[h] for h in ADMINS}},
                },
            }
        }
        path = self.root / "inventory.json"
        path.write_text(json.dumps(inventory, indent=2))
        return path

    def playbook(
        self, name: str, *extra: str, check: bool = True, inventory: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run one playbook; its output goes to root/NAME-N.log as well."""
        env = dict(os.environ)
        env["ANSIBLE_CONFIG"] = str(PLAYBOOKS / "ansible.cfg")
        env["ANSIBLE_NOCOLOR"] = "1"
        env["ANSIBLE_FORCE_COLOR"] = "0"
        env.pop("PYTHONPATH", None)  # the deployed venvs must run their own pairq
        n = len(list(self.root.glob(f"{name}-*.log")))
        log = self.root / f"{name}-{n}.log"  # written as it runs: tail it while debugging
        with log.open("w") as f:
            rc = subprocess.run(
                [
                    ansible_bin("ansible-playbook"),
                    "-i",
                    str(inventory or self.root / "inventory.json"),
                    name,
                    *extra,
                ],
                cwd=PLAYBOOKS,
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=900,
            ).returncode
        proc = subprocess.CompletedProcess([name, *extra], rc, log.read_text(), "")
        if check and proc.returncode != 0:
            raise AssertionError(f"{name} failed ({rc}), see {log}:\n{proc.stdout[-8000:]}")
        return proc

    def spec(self, host: str) -> Path:
        kind = "lookup" if host in LOOKUPS else "admin" if host in ADMINS else "broker"
        return self.host_root(host) / "etc" / f"pairq-{kind}-{host}.json"

    def supervise(self, host: str, verb: str) -> subprocess.CompletedProcess[str]:
        r = self.host_root(host) / "opt"
        return subprocess.run(
            [
                str(r / "venv" / "bin" / "python"),
                str(r / "bin" / "pairq-supervise"),
                verb,
                str(self.spec(host)),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    def service_pid(self, host: str) -> int:
        """The pid of the host's running service (0: not running)."""
        out = self.supervise(host, "status")
        return int(json.loads(out.stdout)["pid"]) if out.stdout.strip() else 0

    def cmdline(self, host: str) -> list[str]:
        """The argv of the host's running service process ([] when not running)."""
        pid = self.service_pid(host)
        if not pid:
            return []
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]

    def config(self, host: str) -> Path:
        """The host's rendered TOML file."""
        return self.spec(host).with_suffix(".toml")

    def starts(self, host: str) -> int:
        """How many times the host's service was started (from its supervisor log)."""
        kind = "lookup" if host in LOOKUPS else "admin" if host in ADMINS else "broker"
        log = self.host_root(host) / "log" / f"pairq-{kind}-{host}.log"
        if not log.exists():
            return 0
        return len(re.findall(r"^pairq-supervise: \S+ started, pid", log.read_text(), re.M))

    def stop_all(self) -> None:
        """Stop every service this deployment started (by its pid files)."""
        for h in ALL:
            if (
                self.spec(h).exists()
                and (self.host_root(h) / "opt" / "bin" / "pairq-supervise").exists()
            ):
                self.supervise(h, "stop")


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP of ansible-playbook output: host -> {ok, changed, failed, ...}."""
    out: dict[str, dict[str, int]] = {}
    text = output.split("PLAY RECAP", 1)[-1]
    for m in re.finditer(r"^(\S+)\s+:\s+(.*)$", text, re.M):
        out[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return out
