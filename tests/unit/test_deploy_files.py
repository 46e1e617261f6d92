"""Containers and Kubernetes (issue 14.5), checked statically: no container runtime or Helm
runs here. The Dockerfile installs CPU torch and runs as a non-root user; compose.yaml's
services, volumes and config files reference each other consistently; the Helm chart's
templates have the required structure and only name values that exist; and every command the
image's entrypoint runs in compose and in the chart is parsed by flsuite's own CLI, with the
config file it names loaded by flsuite's config loaders (the dry run outside a container)."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import click
import pytest
import typer
import yaml

from flsuite.cli.main import app
from flsuite.coordinator.launch import APP_FILES, APP_FOLDERS
from flsuite.deployment.config import CoordinatorConfig, SiteConfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
CHART = DEPLOY / "helm" / "flsuite"
SITES = ("hospital-a", "hospital-b", "hospital-c")


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def parse_cli(args: list[str]) -> tuple[str, dict]:
    """Parse ``args`` as `flsuite ARGS` does, without running the command: (command path, its parameters)."""
    command: click.Command = typer.main.get_command(app)
    context = command.make_context("flsuite", list(args), resilient_parsing=False)
    path = ["flsuite"]
    while isinstance(command, click.Group):
        name, sub, rest = command.resolve_command(context, context.protected_args + context.args)
        path.append(name)
        command, context = sub, sub.make_context(name, rest, parent=context)
    return " ".join(path), context.params


def mounts(service: dict) -> dict[str, str]:
    """Container path -> source (a named volume or a host path) of a compose service."""
    found = {}
    for entry in service.get("volumes", []):
        source, target, *_ = entry.split(":")
        found[target] = source
    return found


# -- the image ------------------------------------------------------------------------------------

def test_the_image_installs_cpu_torch_matching_the_project_and_runs_as_a_non_root_user():
    steps = instructions()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = next(arg for kind, arg in steps if kind == "FROM")
    minimum = project["requires-python"].removeprefix(">=")
    assert re.fullmatch(r"python:(\d+\.\d+)-slim", base) and tuple(map(int, base[7:].split("-")[0].split("."))) >= tuple(
        map(int, minimum.split(".")))
    runs = " ".join(arg for kind, arg in steps if kind == "RUN")
    torch = re.search(r"pip install torch==(\S+) --index-url https://download.pytorch.org/whl/cpu", runs)
    assert torch, "torch must come from PyTorch's CPU index"
    (bounds,) = [d for d in project["dependencies"] if d.startswith("torch")]
    low, high = re.match(r"torch>=([\d.]+),<([\d.]+)", bounds).groups()
    version = tuple(map(int, torch.group(1).split(".")))
    assert tuple(map(int, low.split("."))) <= version < tuple(map(int, high.split(".")))
    assert runs.index("torch==") < runs.index("pip install -e .")  # flsuite's install finds torch there: no CUDA wheels
    (user,) = [arg for kind, arg in steps if kind == "USER"]
    assert user.split(":")[0] not in ("0", "root") and user.split(":")[0].isdigit()
    assert [kind for kind, _ in steps].index("USER") > max(i for i, (kind, _) in enumerate(steps) if kind == "RUN")
    assert next(arg for kind, arg in steps if kind == "ENTRYPOINT") == '["flsuite"]'
    assert project["scripts"]["flsuite"] == "flsuite.cli.main:main"


def test_the_image_copies_what_exists_and_everything_flsuite_launch_submits():
    copied = []
    for kind, arg in instructions():
        if kind == "COPY":
            *sources, _ = arg.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
                copied.append(source.rstrip("/"))
    for name in (*APP_FILES, *APP_FOLDERS):  # `flsuite launch` stages the Flower App from the install folder
        assert name in copied


def test_every_writable_mount_point_exists_in_the_image_owned_by_its_user():
    runs = " ".join(arg for kind, arg in instructions() if kind == "RUN")
    created = set(re.search(r"mkdir -p ([^&]+)", runs.split("useradd")[1]).group(1).split())
    assert "chown -R 10001:10001 /var/lib/flsuite" in runs
    for name, service in compose()["services"].items():
        for target, source in mounts(service).items():
            if not source.startswith(".") and target.startswith("/var/lib/flsuite") and name != "keys":
                assert target in created, f"{name}: volume on {target}, a folder the image lacks (it would be root's)"


# -- compose -------------------------------------------------------------------------------------

def test_compose_services_and_named_volumes_reference_each_other():
    spec = compose()
    services, volumes = spec["services"], spec["volumes"]
    assert set(services) == {"keys", "coordinator", *SITES}
    used = set()
    for name, service in services.items():
        assert service["read_only"] is True and "/tmp" in service["tmpfs"], name
        assert service["image"] == services["keys"]["image"]
        for target, source in mounts(service).items():
            if source.startswith("."):
                if "/data/" not in target:  # a site's own data is the operator's to place
                    assert (DEPLOY / source).is_file(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in volumes, f"{name}: volume {source!r} is not declared"
                used.add(source)
        for dependency in service.get("depends_on", []):
            assert dependency in services
    assert used == set(volumes), f"declared but never mounted: {set(volumes) - used}"
    for site in SITES:
        assert f"{site}-ledger" in volumes and f"{site}-keys" in volumes


def test_compose_runs_a_tls_federation_whose_configs_fit_their_mounts():
    services = compose()["services"]
    coordinator = services["coordinator"]
    command, params = parse_cli(coordinator["command"])
    assert command == "flsuite coordinator run"
    coordinator_mounts = mounts(coordinator)
    config = CoordinatorConfig.model_validate(yaml.safe_load((DEPLOY / coordinator_mounts[str(params["config"])]).read_text()))
    assert set(config.sites) == set(SITES)
    keys = next(target for target, source in coordinator_mounts.items() if source == "coordinator-keys")
    for path in (config.tls.ca_certificate, config.tls.certificate, config.tls.key, *config.sites.values()):
        assert str(path).startswith(keys + "/")
    assert coordinator_mounts[str(config.state_dir)] == "coordinator-state"
    assert f"{config.port}:{config.port}" in coordinator["ports"]
    issue = (DEPLOY / "docker" / "issue-keys.sh").read_text()
    assert "--host coordinator" in issue  # the coordinator's certificate names the host the sites dial
    assert services["keys"]["entrypoint"][-1].split("&&")[0].split()[1:] == list(SITES)
    for site in SITES:
        service = services[site]
        command, params = parse_cli(service["command"])
        assert command == "flsuite site run"
        site_mounts = mounts(service)
        config = SiteConfig.model_validate(yaml.safe_load((DEPLOY / site_mounts[str(params["config"])]).read_text()))
        assert config.site == site and config.coordinator == f"coordinator:{config_port()}"
        assert site_mounts[str(config.bundle)] == f"{site}-keys"
        assert site_mounts[str(config.ledger.parent)] == f"{site}-ledger"
        assert site_mounts[str(config.data)] == f"./data/{site}.csv"
        assert str(config.state_dir).startswith("/tmp/")  # the tmpfs: the root file system is read-only


def config_port() -> int:
    return yaml.safe_load((DEPLOY / "config" / "coordinator.yaml").read_text())["port"]


# -- the entrypoint commands, outside a container --------------------------------------------------

ENTRY_COMMANDS = [
    ["coordinator", "run", "--config", "/etc/flsuite/coordinator.yaml"],
    ["site", "run", "--config", "/etc/flsuite/site.yaml"],
    ["pki", "init", "--dir", "/var/lib/flsuite/pki"],
    ["pki", "issue-coordinator", "--dir", "/var/lib/flsuite/pki", "--host", "coordinator", "--host", "localhost"],
    ["pki", "issue-site", "hospital-a", "--dir", "/var/lib/flsuite/pki"],
    ["launch", "--config", "/etc/flsuite/coordinator.yaml", "--output-dir", "/var/lib/flsuite/outputs/study-1", "privacy=dp"],
]


@pytest.mark.parametrize("args", ENTRY_COMMANDS, ids=lambda args: " ".join(args[:2]))
def test_each_command_the_containers_run_parses_and_has_help(args):
    from typer.testing import CliRunner

    parse_cli(args)  # the argument list as the entrypoint passes it
    words = [a for a in args if not a.startswith("-") and "/" not in a and "=" not in a][:2]
    if words[0] in ("launch",):
        words = words[:1]
    result = CliRunner().invoke(app, [*words, "--help"])
    assert result.exit_code == 0, result.output


def test_the_key_job_issues_with_the_commands_tested_here():
    issue = (DEPLOY / "docker" / "issue-keys.sh").read_text()
    for line in issue.splitlines():
        line = line.strip()
        if line.startswith("flsuite "):
            args = [w.replace('"$PKI"', "/var/lib/flsuite/pki").replace('"$site"', "hospital-a") for w in shlex.split(line, posix=False)[1:]]
            assert parse_cli(args)[0].startswith("flsuite pki ")


def test_a_container_started_with_a_missing_config_fails_with_a_clear_error():
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["site", "run", "--config", "/nonexistent/site.yaml"])
    assert result.exit_code != 0 and "/nonexistent/site.yaml" in (result.output + str(result.exception))


# -- the Helm chart ------------------------------------------------------------------------------

def templates() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted((CHART / "templates").iterdir())}


def values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def stripped(text: str) -> list[dict]:
    """A template as YAML: control lines dropped, every other action replaced by a plain word."""
    lines = []
    for line in text.splitlines():
        if re.fullmatch(r"\s*\{\{-?.*-?\}\}\s*", line):
            continue
        lines.append(re.sub(r"\{\{-?.*?-?\}\}", "X", line))
    return [doc for doc in yaml.safe_load_all("\n".join(lines)) if doc]


def test_the_chart_and_its_values_parse():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "flsuite" and chart["type"] == "application"
    spec = values()
    names = [site["name"] for site in spec["sites"]]
    assert len(names) == len(set(names)) >= 1
    for site in spec["sites"]:
        assert {"name", "keysSecret", "dataClaim", "dataFile", "maxEpsilon", "delta"} <= set(site)
    assert spec["containerSecurityContext"]["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0


def test_every_value_a_template_names_exists_and_every_block_closes():
    spec = values()
    helpers = templates()["_helpers.tpl"]
    defined = set(re.findall(r'\{\{-? define "([^"]+)"', helpers))
    site_fields = set().union(*(set(site) for site in spec["sites"]))
    for name, text in templates().items():
        opened = len(re.findall(r"\{\{-?\s*(?:range|if|define|with)\b", text))
        closed = len(re.findall(r"\{\{-?\s*end\s*-?\}\}", text))
        assert opened == closed, f"{name}: {opened} blocks opened, {closed} closed"
        for path in re.findall(r"\.Values((?:\.\w+)+)", text):
            node = spec
            for key in path.strip(".").split("."):
                assert isinstance(node, dict) and key in node, f"{name}: .Values{path} is not in values.yaml"
                node = node[key]
        for include in re.findall(r'include "([^"]+)"', text):
            assert include in defined, f"{name}: include {include!r} is not defined"
        for block in re.findall(r"range \.Values\.sites \}\}(.*?)\{\{-? end", text, flags=re.S):
            for field in re.findall(r"\{\{-?\s*\.(\w+)", block):
                assert field in site_fields, f"{name}: .{field} is no site's value"


def test_the_chart_deploys_a_coordinator_and_a_site_statefulset_with_a_ledger_claim_and_secret_keys():
    docs = {}
    for name, text in templates().items():
        if name.endswith(".yaml"):
            for doc in stripped(text):
                docs.setdefault(doc["kind"], []).append(doc)
    assert {"Service", "Deployment", "PersistentVolumeClaim", "StatefulSet", "ConfigMap"} <= set(docs)
    (deployment,) = docs["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert parse_cli(container["args"])[0] == "flsuite coordinator run"
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "secret" in volumes["keys"] and "persistentVolumeClaim" in volumes["state"]
    (statefulset,) = docs["StatefulSet"]
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert parse_cli(container["args"])[0] == "flsuite site run"
    mounted = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "ledger" and mounted["ledger"] == "/var/lib/flsuite/ledger"
    assert "secret" in {v["name"]: v for v in pod["volumes"]}["keys"]
    site_config = re.search(r"\{\{ \.name \}\}\.yaml: \|\n(.*?)\{\{- end", templates()["configmap.yaml"], flags=re.S).group(1)
    assert "ledger: /var/lib/flsuite/ledger/" in site_config and "bundle: /etc/flsuite/keys/{{ .name }}" in site_config
    assert "state_dir: /tmp/" in site_config  # an emptyDir: the root file system is read-only
