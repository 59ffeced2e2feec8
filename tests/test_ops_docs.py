"""docs/tls.md, docs/metrics.md, docs/deployment.md and conf/examples: what they show works.

Every ```yaml block is one of three things, and each is checked as what it is: a Rex
config (loaded by the real loader, with real certificates made for the files it
names), Kubernetes manifests (parsed, the ConfigMap's config loaded, and the
Deployment checked against that config), or a Prometheus scrape config (parsed).
Tables that list what the code defines (metric families, cipher suites) are compared
with the code, so neither can change without the other.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import replace
from pathlib import Path

import pytest
import trustme
import yaml
from conftest import ROOT
from docopt import docopt

import rex as rex_cli
from rex_workers.config.loader import load_config
from rex_workers.config.model import Config
from rex_workers.master.exposition import FAMILIES
from rex_workers.shared.tls import CIPHERS, certificate_problem

DOCS = {name: (ROOT / "docs" / name).read_text() for name in
        ("tls.md", "metrics.md", "deployment.md")}
EXAMPLES = ROOT / "conf" / "examples"
BLOCKS = [(name, block) for name, text in DOCS.items()
          for block in re.findall(r"```yaml\n(.*?)```", text, re.S)]


def kind_of(block: str) -> str:
    documents = list(yaml.safe_load_all(block))
    if len(documents) == 1 and isinstance(documents[0], dict) and "server" in documents[0]:
        return "rex"
    if all(isinstance(d, dict) and {"apiVersion", "kind"} <= d.keys() for d in documents):
        return "kubernetes"
    if len(documents) == 1 and "scrape_configs" in documents[0]:
        return "prometheus"
    raise AssertionError(f"a yaml block that is neither a Rex config nor manifests:\n{block}")


def kinds(wanted: str) -> list:
    return [pytest.param(block, id=f"{name}-{n}")
            for n, (name, block) in enumerate(BLOCKS) if kind_of(block) == wanted]


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def materialize(directory: Path, text: str, ca: trustme.CA, name: str = "rex.config.yaml"
                ) -> Path:
    """Write the config with what it names beside it: certificates, public dirs, log dirs."""
    raw = yaml.safe_load(text)
    for inst in raw["server"]["instances"]:
        tls = inst.get("tls") or inst.get("sslConfig")
        if tls:
            issued = ca.issue_cert(*(inst.get("server_names") or ["localhost"]))
            write_pems(directory, tls, cert=issued.cert_chain_pems[0],
                       key=issued.private_key_pem)
        for route in inst.get("routes") or ():
            destinations = route["destination"]
            for entry in [route, *(destinations if isinstance(destinations, list) else ())]:
                if isinstance(entry, dict) and "tls" in entry:  # an upstream's: all real PEM
                    client = ca.issue_cert("rex-client.test")
                    write_pems(directory, entry["tls"], ca=ca.cert_pem,
                               cert=client.cert_chain_pems[0], key=client.private_key_pem)
        if inst.get("public"):
            (directory / inst["public"]).mkdir(parents=True, exist_ok=True)
    for target in (raw.get("logging") or {}).values():
        if isinstance(target, str) and "/" in target:
            (directory / target).parent.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def load_example(directory: Path, text: str, ca: trustme.CA,
                 name: str = "rex.config.yaml") -> Config:
    config = load_config(str(materialize(directory, text, ca, name)))
    # What `rex start` checks next: every certificate loads with its key.
    assert [certificate_problem(i) for i in config.instances] == [None] * len(config.instances)
    return config


def test_every_page_has_examples():
    found = {name for name, _ in BLOCKS}
    assert found == set(DOCS)
    assert len(kinds("rex")) >= 6 and kinds("kubernetes") and kinds("prometheus")


@pytest.mark.parametrize("text", kinds("rex"))
def test_rex_config_example_loads_and_its_certificates_work(tmp_path, ca, text):
    config = load_example(tmp_path, text, ca)
    assert config.instances


@pytest.mark.parametrize("text", kinds("prometheus"))
def test_prometheus_example_scrapes_the_admin_path(text):
    (job,) = yaml.safe_load(text)["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert int(job["scrape_timeout"].rstrip("s")) <= 5  # the admin listener's deadline


def manifests(text: str) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(text)}


@pytest.mark.parametrize("text", kinds("kubernetes"))
def test_kubernetes_manifests_agree_with_rex(tmp_path, ca, text):
    found = manifests(text)
    if "Deployment" not in found:
        return  # a lone PodMonitor (metrics.md): it parses
    config = load_example(tmp_path, found["ConfigMap"]["data"]["rex.config.yaml"], ca)
    pod = found["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = docopt(rex_cli.__doc__, argv=container["args"])
    assert args["start"] and args["--foreground"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert args["--config"] == f"{mount['mountPath']}/rex.config.yaml"
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == found["ConfigMap"]["metadata"]["name"]
    assert "subPath" not in mount  # subPath mounts never see ConfigMap updates
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["admin"] == config.admin.port and config.admin.host == "0.0.0.0"
    assert ports["http"] in {i.port for i in config.instances}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": "admin"}
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > (
        sleep + config.graceful_timeout + rex_cli.KILL_MARGIN)
    assert config.workers == int(container["resources"]["limits"]["cpu"])
    labels = found["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert found["Service"]["spec"]["selector"].items() <= labels.items()
    assert container["securityContext"]["runAsUser"] == dockerfile_user()


# ------------------------------------------------------------------ conf/examples


def dockerfile() -> dict[str, list[str]]:
    instructions: dict[str, list[str]] = {}
    text = (EXAMPLES / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            instructions.setdefault(word, []).append(rest.strip())
    return instructions


def dockerfile_user() -> int:
    (user,) = dockerfile()["USER"]
    return int(user.split(":")[0])


def test_container_recipe_runs_rex_on_its_config(tmp_path, ca):
    steps = dockerfile()
    (entry,) = steps["ENTRYPOINT"]
    (cmd,) = steps["CMD"]
    assert json.loads(entry) == ["rex"]
    args = docopt(rex_cli.__doc__, argv=json.loads(cmd))
    assert args["start"] and args["--foreground"]
    copies = dict(shlex.split(c)[::-1] for c in steps["COPY"])  # destination -> source
    for source in copies.values():
        assert (ROOT / source).exists(), source
    # The image puts the starter page where the config's relative `public` points.
    config = load_example(tmp_path, (ROOT / copies[args["--config"]]).read_text(), ca)
    public = Path(args["--config"]).parent / config.instances[0].public.removeprefix(
        str(tmp_path) + "/")
    assert str(public / "index.html") in copies
    exposed = {int(p) for p in steps["EXPOSE"][0].split()}
    assert exposed == {config.instances[0].port, config.admin.port}
    assert all(i.port > 1024 for i in config.instances)  # the image does not run as root
    assert dockerfile_user() != 0
    assert f"127.0.0.1:{config.admin.port}/live" in steps["HEALTHCHECK"][0]
    # deployment.md shows this config: it must mean the same.
    documented = re.search(r"The container's config:\n\n```yaml\n(.*?)```",
                           DOCS["deployment.md"], re.S)[1]
    shown = load_example(tmp_path, documented, ca, "documented.yaml")
    assert meaning(shown) == meaning(config)


def meaning(config: Config) -> Config:
    """The config without where it was written down (file, digest, line numbers)."""
    return replace(config, path="", digest="",
                   instances=tuple(replace(i, line=0) for i in config.instances))


# ------------------------------------------------------------------ tables match the code


def write_pems(directory: Path, tls: dict, **pems) -> None:
    """The PEM files a ``tls:`` mapping names, where it names them."""
    for field, pem in pems.items():
        if field in tls:
            assert not Path(tls[field]).is_absolute(), "examples use paths the test can make"
            (directory / tls[field]).parent.mkdir(parents=True, exist_ok=True)
            pem.write_to_path(str(directory / tls[field]))


def test_every_metric_is_documented_with_its_type():
    table = dict(re.findall(r"^\| `((?:rex|process)_\w+)` \| (\w+)", DOCS["metrics.md"], re.M))
    assert table == {name: kind for name, (kind, _help) in FAMILIES.items()}


def test_admin_pages_documented_are_the_master_s():
    source = (ROOT / "rex.py").read_text()
    for page in ("/live", "/ready", "/status", "/metrics"):
        assert f"| `{page}` |" in DOCS["metrics.md"]
        assert f'"{page}"' in source


def test_documented_cipher_suites_are_the_ones_set():
    row = next(line for line in DOCS["tls.md"].splitlines()
               if line.startswith("| TLS 1.2 cipher suites |"))
    assert re.findall(r"`([A-Z0-9-]+)`", row) == CIPHERS.split(":")


def test_documented_unit_settings_are_the_shipped_unit_s():
    unit = (ROOT / "conf" / "systemd" / "rex.service").read_text()
    table = "\n".join(line for line in DOCS["deployment.md"].splitlines() if line.startswith("|"))
    for setting in re.findall(r"`((?:Type|NotifyAccess|KillSignal|KillMode|TimeoutStopSec|"
                              r"RestartPreventExitStatus|LimitNOFILE)=\S+?)`",
                              table):
        assert f"\n{setting}\n" in unit, setting


def test_readme_links_the_pages():
    readme = (ROOT / "README.md").read_text()
    for name in DOCS:
        assert f"(docs/{name})" in readme
