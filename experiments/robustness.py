"""Robustness of flsuite against adversarial cases (issue 12): cases tried and handled per group.

Each case runs the real thing: the `flsuite` CLI in a subprocess where that is the user's path
(bad study input, audit verification), or the library on the in-process Grid (misbehaving
sites as ClientApp mods, a dishonest coordinator as a Grid tamper hook), and records whether
flsuite HANDLED it: refused with a clear message and the documented exit code, or left the
culprit out and recorded why; no traceback, nothing wrong written or published.

Run: PYTHONPATH=. python -m experiments.robustness [--out experiments/results/robustness.json]
     [--only GROUP,...]    (about 5-8 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
os.environ.update({key: ENV[key] for key in ("FLWR_TELEMETRY_ENABLED", "RAY_USAGE_STATS_ENABLED")})

GROUPS = ("bad input", "registry and audit", "faulty or malicious sites", "dishonest coordinator", "faults", "secrets")


@dataclass
class Result:
    group: str
    case: str
    handled: bool
    detail: str
    seconds: float


@dataclass(frozen=True)
class Case:
    group: str
    name: str
    run: Callable[[Path], tuple[bool, str]]
    subprocess: bool = False  # runs the CLI: may run beside another such case


CASES: list[Case] = []


def case(group: str, name: str, *, cli: bool = False):
    assert group in GROUPS, group

    def register(function: Callable[[Path], tuple[bool, str]]):
        CASES.append(Case(group, name, function, cli))
        return function

    return register


# ---------------------------------------------------------------------------------------------
# helpers


def flsuite_cli(*args: str, cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flsuite.cli.main", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def traceback_in(result: subprocess.CompletedProcess) -> bool:
    return "Traceback (most recent call last)" in result.stdout + result.stderr


def last_line(result: subprocess.CompletedProcess) -> str:
    text = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return " ".join(text[-3:])[-220:] if text else ""


def written(folder: Path) -> list[str]:
    """What a refused command left behind in ``folder``."""
    if not folder.exists():
        return []
    if folder.is_file():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def smoke(tmp: Path, *overrides: str) -> list[str]:
    return ["run", "experiment=smoke", "privacy=none", "secagg=none", f"sites_dir={tmp / 'sites'}", *overrides]


def refused_cleanly(result: subprocess.CompletedProcess, tmp: Path, *, code: int = 2, out: Path | None = None) -> tuple[bool, str]:
    left = written(out if out is not None else tmp / "out")
    handled = result.returncode == code and not traceback_in(result) and not left
    detail = f"exit {result.returncode}" + (", traceback" if traceback_in(result) else "") + (
        f", left {left[:4]}" if left else "") + f": {last_line(result)}"
    return handled, detail


def user_error(call: Callable[[], object], *, must_name: str = "") -> tuple[bool, str]:
    """Handled when ``call`` raises a UserError (a refusal with a message) naming ``must_name``."""
    from flsuite.errors import UserError

    try:
        call()
    except UserError as err:
        ok = must_name in str(err)
        return ok, f"{type(err).__name__}: {str(err)[:220]}" + ("" if ok else f" (does not name {must_name})")
    except Exception as err:  # noqa: BLE001 - an unexpected exception is what we measure
        return False, f"unhandled {type(err).__name__}: {str(err)[:200]}"
    return False, "accepted"


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def good_rows(count: int = 60, *, width: int = 3) -> str:
    header = ",".join(f"f{i}" for i in range(width)) + ",label\n"
    return header + "".join(",".join(f"{(r * 7 + i) % 11 / 10:.2f}" for i in range(width)) + f",{r % 2}\n" for r in range(count))


# ---------------------------------------------------------------------------------------------
# bad input: `flsuite run` refuses before writing anything (exit 2)


def _run_refused(*overrides: str, extra: tuple[str, ...] = ()):
    def run(tmp: Path) -> tuple[bool, str]:
        result = flsuite_cli(*smoke(tmp, *overrides), "--output-dir", str(tmp / "out"), *extra, cwd=tmp)
        handled, detail = refused_cleanly(result, tmp)
        sites_left = written(tmp / "sites")
        return handled and not sites_left, detail + (f", sites_dir written {sites_left[:3]}" if sites_left else "")
    return run


for _name, _overrides in [
    ("learning_rate=inf", ("training.learning_rate=inf",)),
    ("seed=-1", ("seed=-1",)),
    ("federation.rounds=true", ("federation.rounds=true",)),
    ("min_sites > num_sites", ("federation.min_sites=9",)),
    ("unknown key", ("training.lerning_rate=0.1",)),
]:
    case("bad input", f"config: {_name}", cli=True)(_run_refused(*_overrides))


@case("bad input", "config: noise_multiplier=0 leaves nothing behind", cli=True)
def _noise_zero(tmp: Path) -> tuple[bool, str]:
    result = flsuite_cli("run", "experiment=smoke", f"sites_dir={tmp / 'sites'}", "privacy.target_epsilon=null",
                         "privacy.noise_multiplier=0", "--output-dir", str(tmp / "out"), cwd=tmp)
    return refused_cleanly(result, tmp)


@case("bad input", "config: --output-dir is a file", cli=True)
def _output_file(tmp: Path) -> tuple[bool, str]:
    target = write_csv(tmp / "out", "not a folder\n")
    result = flsuite_cli(*smoke(tmp), "--output-dir", str(target), cwd=tmp)
    handled, detail = refused_cleanly(result, tmp, out=tmp / "nothing")
    return handled and target.read_text() == "not a folder\n", detail


@case("bad input", "config: data.csv_path without data=csv", cli=True)
def _csv_path_without_csv(tmp: Path) -> tuple[bool, str]:
    csv = write_csv(tmp / "mine.csv", good_rows())
    result = flsuite_cli(*smoke(tmp, f"data.csv_path={csv}"), "--output-dir", str(tmp / "out"), cwd=tmp)
    return refused_cleanly(result, tmp)


def _csv_refused(text: str, *, must_name: str):
    def run(tmp: Path) -> tuple[bool, str]:
        csv = write_csv(tmp / "site.csv", text)
        ranges = "+data.feature_ranges={f0:[0,1],f1:[0,1],f2:[0,1]}"  # declared, so the file's own fault is named
        result = flsuite_cli(*smoke(tmp, "data=csv", f"data.csv_path={csv}", ranges), "--output-dir", str(tmp / "out"), cwd=tmp)
        handled, detail = refused_cleanly(result, tmp)
        named = must_name in result.stdout + result.stderr
        return handled and named, detail + ("" if named else f" (does not name {must_name!r})")
    return run


_GOOD = good_rows()
for _name, _text, _named in [
    ("duplicated header", _GOOD.replace("f1,", "f0,", 1), "line 1"),
    ("row with an extra field", _GOOD.replace("\n", ",9\n", 5).replace(",9\n", "\n", 4), "line"),
    ("value 1e39 (inf in float32)", _GOOD.replace("\n", "\n1e39,0,0,1\n", 3).replace("\n1e39,0,0,1\n", "\n", 2), "'f0'"),
    ("label 1e12", _GOOD + "0.1,0.2,0.3,1000000000000\n", "label"),
    ("text in a feature column", _GOOD + "0.1,abc,0.3,1\n", "abc"),
    ("empty file", "", "empty"),
]:
    case("bad input", f"csv: {_name}", cli=True)(_csv_refused(_text, must_name=_named))


def _federation(tmp: Path):
    from flsuite.deployment.testing import write_federation

    return write_federation(tmp, sites=("hospital-a", "hospital-b"))


@case("bad input", "site check: garbage node-auth.key")
def _garbage_node_auth(tmp: Path) -> tuple[bool, str]:
    from flsuite.site import check_site

    federation = _federation(tmp)
    config = federation.site("hospital-a")
    key = config.bundle / "node-auth.key"
    key.write_bytes(b"this is not a key\n")
    return user_error(lambda: check_site(config, probe=False), must_name=str(key))


@case("bad input", "site check: another site's node-auth.key")
def _foreign_node_auth(tmp: Path) -> tuple[bool, str]:
    from flsuite.site import check_site

    federation = _federation(tmp)
    config = federation.site("hospital-a")
    key = config.bundle / "node-auth.key"
    key.write_bytes((federation.site("hospital-b").bundle / "node-auth.key").read_bytes())
    return user_error(lambda: check_site(config, probe=False), must_name=str(key))


@case("bad input", "site check: delta above 1/N")
def _delta_above(tmp: Path) -> tuple[bool, str]:
    import yaml

    from flsuite.deployment import load_site_config
    from flsuite.site import check_site

    federation = _federation(tmp)
    path = federation.site_configs["hospital-a"]
    data = yaml.safe_load(path.read_text())
    data["privacy"]["delta"] = 0.1
    path.write_text(yaml.safe_dump(data))
    write_csv(federation.site("hospital-a").data, good_rows(100))
    return user_error(lambda: check_site(load_site_config(path), probe=False), must_name="N = 100")


@case("bad input", "site config: max_epsilon: true")
def _site_boolean(tmp: Path) -> tuple[bool, str]:
    import yaml

    from flsuite.deployment import load_site_config

    federation = _federation(tmp)
    path = federation.site_configs["hospital-a"]
    data = yaml.safe_load(path.read_text())
    data["privacy"]["max_epsilon"] = True
    path.write_text(yaml.safe_dump(data))
    return user_error(lambda: load_site_config(path), must_name="max_epsilon")


@case("bad input", "site check: expired CA certificate")
def _expired_ca(tmp: Path) -> tuple[bool, str]:
    from datetime import UTC, datetime, timedelta

    from flsuite.site import check_site

    config = _federation(tmp).site("hospital-a")
    return user_error(lambda: check_site(config, probe=False, now=datetime.now(UTC) + timedelta(days=4000)),
                      must_name="ca.crt")


# ---------------------------------------------------------------------------------------------
# registry and audit: `flsuite audit verify` fails (exit 1) on every tampered registry


def _registry(tmp: Path) -> tuple[Path, Path]:
    from flsuite.registry import Registry
    from flsuite.registry.testing import StepClock, publish_sample

    path, key = tmp / "registry", tmp / "coordinator.pem"
    with Registry.open(path, signing_key_path=key, clock=StepClock()) as reg:
        for round_ in range(6):
            publish_sample(reg, round=round_)
        reg.promote(3, "production")
        reg.promote(6, "production")
    return path, key


def _audit_fails(tamper: Callable[[Path, Path], list[str]]):
    def run(tmp: Path) -> tuple[bool, str]:
        path, key = _registry(tmp)
        extra = tamper(path, tmp)
        result = flsuite_cli("audit", "verify", str(path), *extra, cwd=tmp)
        handled = result.returncode == 1 and not traceback_in(result) and "FAILED" in result.stdout + result.stderr
        return handled, f"exit {result.returncode}: {last_line(result)}"
    return run


def _lines(path: Path) -> list[bytes]:
    return (path / "audit.jsonl").read_bytes().splitlines(keepends=True)


def _flip_blob(path: Path, tmp: Path) -> list[str]:
    blob = max((path / "blobs").rglob("*"), key=lambda p: p.is_file() and p.stat().st_size)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    return []


def _edit_line(path: Path, tmp: Path) -> list[str]:
    lines = _lines(path)
    lines[3] = lines[3].replace(b'"round":', b'"round": ', 1) if b'"round":' in lines[3] else lines[3][:-2] + b" }\n"
    (path / "audit.jsonl").write_bytes(b"".join(lines))
    return []


def _reorder(path: Path, tmp: Path) -> list[str]:
    lines = _lines(path)
    lines[2], lines[3] = lines[3], lines[2]
    (path / "audit.jsonl").write_bytes(b"".join(lines))
    return []


def _truncate(path: Path, tmp: Path) -> list[str]:
    (path / "audit.jsonl").write_bytes(b"".join(_lines(path)[:-2]))
    return []


def _re_sign(path: Path, tmp: Path) -> list[str]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from flsuite.audit import AuditEntry, key_id, public_key_pem, seal, sign, write_head
    from flsuite.audit.canonical import canonical_sha256
    from flsuite.registry import verify_registry
    from flsuite.registry.catalogue import Catalogue
    from flsuite.registry.manifest import MANIFEST_DOMAIN

    genuine = verify_registry(path).key_ids[0]
    attacker = Ed25519PrivateKey.generate()
    prev, entries = "0" * 64, []
    for line in _lines(path):
        old = AuditEntry.from_dict(json.loads(line))
        payload = dict(old.payload)
        if old.kind == "registry.created":
            payload["keys"] = [key_id(attacker), *payload["keys"]]
        if old.kind == "version.published":
            payload["manifest_hash"] = canonical_sha256(payload["manifest"])
            payload["manifest_sig"] = sign(attacker, MANIFEST_DOMAIN, payload["manifest_hash"].encode())
        entry = seal(seq=old.seq, time=old.time, kind=old.kind, payload=payload, prev=prev, signing_key=attacker)
        entries.append(entry)
        prev = entry.hash
    (path / "audit.jsonl").write_bytes(b"".join(e.to_line() for e in entries))
    (path / "keys" / f"{key_id(attacker)}.pub").write_bytes(public_key_pem(attacker))
    write_head(path / "head.json", entries[-1], registry_id=entries[0].payload["registry_id"], time=entries[-1].time,
               signing_key=attacker)
    for file in path.glob("catalogue.sqlite*"):
        file.unlink()
    catalogue = Catalogue(path / "catalogue.sqlite", writable=True)
    catalogue.apply(entries)
    catalogue.close()
    return ["--expect-key", genuine]


def _catalogue_edit(path: Path, tmp: Path) -> list[str]:
    db = sqlite3.connect(path / "catalogue.sqlite")
    last = db.execute("SELECT max(seq) FROM alias_moves").fetchone()[0]
    for (trigger,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        db.execute(f'DROP TRIGGER "{trigger}"')
    db.execute("DELETE FROM alias_moves WHERE seq = ?", (last,))
    db.execute("UPDATE meta SET value = ? WHERE key = 'applied_seq'", (str(last - 1),))
    db.commit()
    db.close()
    return []


def _older_copy(path: Path, tmp: Path) -> list[str]:
    from flsuite.registry import Registry
    from flsuite.registry.testing import StepClock, publish_sample

    older = tmp / "older-copy"
    shutil.copytree(path, older)
    with Registry.open(path, signing_key_path=tmp / "coordinator.pem", create=False, clock=StepClock()) as reg:
        publish_sample(reg, round=7)
    head = tmp / "kept-head.json"
    saved = flsuite_cli("audit", "verify", str(path), "--write-head", str(head), cwd=tmp)
    if saved.returncode != 0 or not head.is_file():
        raise RuntimeError(f"could not save the head: {last_line(saved)}")
    # the auditor is now handed the older copy in place of the registry
    shutil.rmtree(path)
    shutil.copytree(older, path)
    return ["--since", str(head)]


for _name, _tamper in [
    ("flipped bit in a weights blob", _flip_blob),
    ("edited log line", _edit_line),
    ("reordered log lines", _reorder),
    ("truncated log tail", _truncate),
    ("log re-signed by an attacker, under a pin", _re_sign),
    ("catalogue: last alias move deleted, applied_seq lowered", _catalogue_edit),
    ("older copy handed over, --since the kept head", _older_copy),
]:
    case("registry and audit", _name, cli=True)(_audit_fails(_tamper))


# ---------------------------------------------------------------------------------------------
# faulty or malicious sites: a ClientApp mod on site-0 of a whole study on the in-process Grid

_BASELINE: dict[str, float] = {}


def _study(tmp: Path, *overrides: str):
    from flsuite.config import compose_study

    return compose_study(["experiment=smoke", "privacy=none", "secagg=none", f"sites_dir={tmp / 'sites'}",
                          "federation.round_timeout_s=20", *overrides])


def _evil_app(mod, *, outermost: bool = False):
    from flwr.clientapp import ClientApp

    from flsuite.site import handle_evaluate, handle_query, handle_train, secagg_mod, simulated_site_mod

    # outermost: the mod sees what leaves the site (the masked vector); else the update before masking
    mods = [mod, simulated_site_mod, secagg_mod] if outermost else [simulated_site_mod, secagg_mod, mod]
    app = ClientApp(mods=mods)
    app.train()(handle_train)
    app.evaluate()(handle_evaluate)
    app.query()(handle_query)
    return app


def _only(site: int, change):
    """A mod that changes the train replies of simulated site ``site`` only."""
    from flsuite import protocol

    def mod(msg, context, call_next):
        reply = call_next(msg, context)
        if (msg.metadata.message_type.startswith("train") and int(context.node_config.get(protocol.PARTITION_ID, -1)) == site
                and reply.has_content()):
            change(reply)
        return reply

    return mod


def _replace_arrays(function):
    """Reply tamper: arrays -> function(dict of numpy arrays)."""
    from flwr.app import Array, ArrayRecord

    from flsuite import protocol

    def tamper(reply) -> None:
        arrays = reply.content[protocol.ARRAYS]
        changed = function({key: arrays[key].numpy() for key in arrays})
        reply.content[protocol.ARRAYS] = ArrayRecord({key: Array(value) for key, value in changed.items()})
    return tamper


def _site_study(tamper, *overrides: str, outermost: bool = False, expect_site: str | None = "site-0", accuracy_floor: float = 0.85):
    """``expect_site=None``: the culprit cannot be known (a masked vector under secure aggregation);
    handled then means the round was aborted with its reason and no bad model was published."""
    def run(tmp: Path) -> tuple[bool, str]:
        from flsuite.errors import FlsuiteError
        from flsuite.simulation import run_local_study

        study = _study(tmp, *overrides)
        try:
            summary = run_local_study(study, tmp / "out", client_app=_evil_app(_only(0, tamper), outermost=outermost))
        except FlsuiteError as err:
            summary_file = tmp / "out" / "summary.json"
            return summary_file.is_file(), f"{type(err).__name__}: {str(err)[:160]}" + (
                "" if summary_file.is_file() else " (no summary.json)")
        except Exception as err:  # noqa: BLE001
            return False, f"unhandled {type(err).__name__}: {str(err)[:160]}"
        return _judge(summary, expect_site=expect_site, accuracy_floor=accuracy_floor)
    return run


def _recorded(summary: dict, site: str) -> bool:
    """The summary names ``site`` among refusals, rejections, failures, left-out sites or aborted rounds
    (under a key that says so, or in one record that says so)."""
    words = ("refus", "reject", "abort", "fail", "left", "excluded", "dropped", "late")

    def search(node: object) -> bool:
        if isinstance(node, dict):
            return any((any(w in str(key) for w in words) and site in json.dumps(value)) or search(value)
                       for key, value in node.items())
        if isinstance(node, list):
            return any((isinstance(item, dict) and site in (text := json.dumps(item)) and any(w in text for w in words))
                       or search(item) for item in node)
        return False

    return search(summary)


def _judge(summary: dict, *, expect_site: str | None, accuracy_floor: float) -> tuple[bool, str]:
    accuracy = summary.get("final_accuracy")
    published = summary.get("final_version") is not None
    finite = accuracy is not None and math.isfinite(accuracy)
    if expect_site is None:
        expect_site = "the aborted round"
        recorded = bool(summary.get("aborted_rounds")) and all(r.get("reason") for r in summary["aborted_rounds"])
    else:
        recorded = _recorded(summary, expect_site)
    good_model = (finite and accuracy >= accuracy_floor) or not published
    honest_status = summary["status"] == "completed" or summary["status"] != "completed" and summary.get("message")
    detail = (f"status {summary['status']}, accuracy {accuracy if accuracy is None else round(accuracy, 3)}, "
              f"published v{summary.get('final_version')}, {expect_site} recorded: {recorded}")
    return bool(recorded and good_model and honest_status), detail


for _name, _change in [
    ("NaN update", lambda a: {k: v * float("nan") for k, v in a.items()}),
    ("inf update", lambda a: {k: v + float("inf") for k, v in a.items()}),
    ("wrong-shape update", lambda a: {k: v.reshape(-1)[:-1] if v.size > 1 else v.reshape(1, 1) for k, v in a.items()}),
    ("missing-key update", lambda a: dict(list(a.items())[1:]) if len(a) > 1 else {"other": next(iter(a.values()))}),
    ("update x1e6", lambda a: {k: v * 1e6 for k, v in a.items()}),
]:
    case("faulty or malicious sites", f"plain: {_name}")(_site_study(_replace_arrays(_change)))


def _metric(key_value):
    from flwr.app import MetricRecord

    from flsuite import protocol

    def tamper(reply) -> None:
        metrics = dict(reply.content[protocol.METRICS])
        metrics[protocol.NUM_EXAMPLES] = key_value
        reply.content[protocol.METRICS] = MetricRecord(metrics)
    return tamper


case("faulty or malicious sites", "plain: num-examples 1e9 with a shifted update")(
    _site_study(lambda reply: (_metric(10 ** 9)(reply), _replace_arrays(lambda a: {k: v + 5.0 for k, v in a.items()})(reply))))
case("faulty or malicious sites", "plain: num-examples -5")(_site_study(_metric(-5)))


def _garbage_masked(reply) -> None:
    import numpy as np
    from flwr.app import Array, ArrayRecord

    from flsuite import protocol

    if protocol.MASKED_RECORD in reply.content:
        record = reply.content[protocol.MASKED_RECORD]
        rng = np.random.default_rng(0)
        reply.content[protocol.MASKED_RECORD] = ArrayRecord({
            key: Array(rng.integers(0, 2 ** 31, size=record[key].numpy().shape).astype(record[key].numpy().dtype))
            for key in record})


case("faulty or malicious sites", "secure: garbage masked vector")(
    _site_study(_garbage_masked, "secagg=secure", outermost=True, expect_site=None))


def _shift_masked(reply) -> None:
    from flwr.app import Array, ArrayRecord

    from flsuite import protocol

    if protocol.MASKED_RECORD in reply.content:
        record = reply.content[protocol.MASKED_RECORD]
        reply.content[protocol.MASKED_RECORD] = ArrayRecord({key: Array(record[key].numpy() + (1 << 20)) for key in record})


case("faulty or malicious sites", "secure: shifted masked vector")(
    _site_study(_shift_masked, "secagg=secure", outermost=True, expect_site=None))
case("faulty or malicious sites", "secure: update x1e6 before masking")(
    _site_study(_replace_arrays(lambda a: {k: v * 1e6 for k, v in a.items()}), "secagg=secure"))


def _dp_event_lie(reply) -> None:
    from flwr.app import ConfigRecord

    from flsuite import protocol

    if protocol.DP_EVENT in reply.content:
        event = dict(reply.content[protocol.DP_EVENT])
        for key in event:
            if "noise" in key:
                event[key] = float(event[key]) * 0.5
        reply.content[protocol.DP_EVENT] = ConfigRecord(event)


def _forged_head(reply) -> None:
    from flwr.app import ConfigRecord

    from flsuite import protocol

    if protocol.SITE in reply.content:
        status = dict(reply.content[protocol.SITE])
        if "head-signature" in status:
            status["head-signature"] = "00" * 64
        reply.content[protocol.SITE] = ConfigRecord(status)


_DP = ("privacy=dp", "privacy.target_epsilon=null", "privacy.noise_multiplier=1.5", "privacy.accountant=rdp")
# DP-SGD costs accuracy: the floor only tells a published model from a ruined one
case("faulty or malicious sites", "DP event that does not match the plan")(_site_study(_dp_event_lie, *_DP, accuracy_floor=0.6))
case("faulty or malicious sites", "forged ledger head")(_site_study(_forged_head, *_DP, accuracy_floor=0.6))


@case("faulty or malicious sites", "cut ledger before the next study")
def _cut_ledger(tmp: Path) -> tuple[bool, str]:
    from flsuite.errors import FlsuiteError
    from flsuite.simulation import run_local_study

    first = run_local_study(_study(tmp, *_DP), tmp / "first")
    ledger = tmp / "sites" / "site-0" / "ledger.jsonl"
    if first["status"] != "completed" or not ledger.is_file():
        return False, f"set-up failed: {first['status']} {first.get('message')}"
    ledger.write_bytes(b"".join(ledger.read_bytes().splitlines(keepends=True)[:-1]))
    try:
        summary = run_local_study(_study(tmp, *_DP), tmp / "out")
    except FlsuiteError as err:
        return True, f"{type(err).__name__}: {str(err)[:160]}"
    except Exception as err:  # noqa: BLE001
        return False, f"unhandled {type(err).__name__}: {str(err)[:160]}"
    recorded = _recorded(summary, "site-0")
    return recorded, (f"status {summary['status']}, {summary.get('sites_trained')} of {summary.get('sites')} sites trained; "
                      f"site-0 {'recorded' if recorded else 'not named'} among refusals in summary.json")


@case("faulty or malicious sites", "hanging site (30 s, round_timeout_s=5)")
def _hanging(tmp: Path) -> tuple[bool, str]:
    from flsuite.errors import FlsuiteError
    from flsuite.simulation import run_local_study

    release = threading.Event()

    def hang(msg, context, call_next):
        from flsuite import protocol

        if msg.metadata.message_type.startswith("train") and int(context.node_config.get(protocol.PARTITION_ID, -1)) == 0:
            release.wait(30)
        return call_next(msg, context)

    started = time.monotonic()
    try:
        summary = run_local_study(_study(tmp, "federation.round_timeout_s=5", "engine.parallel_sites=5", "engine.site_workers=threads"),
                                  tmp / "out",
                                  client_app=_evil_app(hang, outermost=True))
    except FlsuiteError as err:
        return False, f"{type(err).__name__}: {str(err)[:160]}"
    finally:
        release.set()
    wall = time.monotonic() - started
    ok = wall < 25 and summary["rounds_completed"] == summary["rounds_planned"]
    return ok, f"wall {wall:.0f} s for 2 rounds, status {summary['status']}, rounds {summary['rounds_completed']}"


@case("faulty or malicious sites", "quorum: 3 of 5 sites crash, min_sites=3")
def _quorum(tmp: Path) -> tuple[bool, str]:
    from flsuite import protocol
    from flsuite.errors import FlsuiteError
    from flsuite.simulation import run_local_study

    def crash(msg, context, call_next):
        if msg.metadata.message_type.startswith("train") and int(context.node_config.get(protocol.PARTITION_ID, -1)) < 3:
            raise RuntimeError("disk on fire")
        return call_next(msg, context)

    try:
        summary = run_local_study(_study(tmp, "federation.min_sites=3"), tmp / "out", client_app=_evil_app(crash, outermost=True))
    except FlsuiteError as err:
        return (tmp / "out" / "summary.json").is_file(), f"{type(err).__name__}: {str(err)[:160]}"
    published = summary.get("registry_versions") or []
    return not published and summary["status"] != "completed", (
        f"status {summary['status']}, published versions {published}")


# ---------------------------------------------------------------------------------------------
# dishonest coordinator: the secure-aggregation refusals of honest sites, and the site's own settings


def _secure_round(tmp: Path, tamper=None):
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    from flsuite.coordinator.secure_round import secure_train_round
    from flsuite.flower import InProcessGrid, new_run
    from flsuite.secagg import SecAggSettings
    from flsuite.site.testing import build_sites

    nodes = [2000 + 3 * i for i in range(5)]
    trained: list[int] = []

    def train(msg, context):
        trained.append(context.node_id)
        w = msg.content["arrays"]["w"].numpy()
        return Message(RecordDict({"arrays": ArrayRecord({"w": Array(w + 0.1)}),
                                   "metrics": MetricRecord({"num-examples": 10})}), reply_to=msg)

    handlers, contexts = build_sites(tmp, nodes, train, run_id=7)
    grid = InProcessGrid(handlers, contexts, run=new_run(7), wire=True, tamper=tamper)
    with grid:
        result = secure_train_round(grid, node_ids=nodes, server_round=1, global_arrays=ArrayRecord({"w": Array(np.zeros(6))}),
                                    train_configs={n: ConfigRecord() for n in nodes},
                                    settings=SecAggSettings(cohort_size=5, threshold=3), timeout_s=5)
    return grid, handlers, contexts, nodes, result, trained


def _tamper_stage(stage, change, only=None):
    def tamper(msg):
        request = msg.content.config_records.get("secagg")
        if request is not None and request["stage"] == stage and (only is None or msg.metadata.dst_node_id in only):
            change(msg, request)
        return msg
    return tamper


def _sites_refuse(stage: str, change, reason: str, *, only_first: bool = False):
    def run(tmp: Path) -> tuple[bool, str]:
        from flsuite.errors import SecAggAborted

        only = {2000 + 3} if only_first else None
        try:
            grid, *_rest, result, trained = _secure_round(tmp, _tamper_stage(stage, change, only))
        except SecAggAborted as err:
            return reason in str(err), f"round aborted: {str(err)[:160]}"
        except Exception as err:  # noqa: BLE001
            return False, f"unhandled {type(err).__name__}: {str(err)[:160]}"
        refusals = getattr(result, "refusals", {})
        ok = any(reason in str(why) for why in refusals.values())
        return ok, f"round finished; refusals {str(refusals)[:160]}"
    return run


def _overlap(msg, request) -> None:
    from flsuite.secagg.wire import pack_ids, unpack_ids

    request["dropped"] = pack_ids(unpack_ids(request["survivors"])[:1])


def _unsigned_key(msg, request) -> None:
    from flsuite.secagg import primitives as crypto
    from flsuite.secagg.wire import KEY_SIZE, pack_blobs, unpack_blobs

    keys = unpack_blobs(request["peer-c-pk"], KEY_SIZE)
    keys[0] = crypto.x25519_keypair(lambda n: b"\x42" * n)[1]
    request["peer-c-pk"] = pack_blobs(keys, KEY_SIZE)


def _other_model(msg, request) -> None:
    import numpy as np
    from flwr.app import Array, ArrayRecord

    msg.content["arrays"] = ArrayRecord({"w": Array(np.ones(6))})


def _below_threshold(msg, request) -> None:
    from flsuite.secagg.wire import pack_ids, unpack_ids

    everyone = unpack_ids(request["survivors"])
    me = msg.metadata.dst_node_id
    keep = [me] + [n for n in everyone if n != me][:1]
    request["survivors"] = pack_ids(sorted(keep))
    request["dropped"] = pack_ids([n for n in everyone if n not in keep])


case("dishonest coordinator", "secagg: node in both survivor and dropped lists")(
    _sites_refuse("unmask", _overlap, "overlapping-lists"))
case("dishonest coordinator", "secagg: shares asked below the threshold")(
    _sites_refuse("unmask", _below_threshold, "below-threshold"))
case("dishonest coordinator", "secagg: peer key not signed by a pinned identity")(
    _sites_refuse("share-keys", _unsigned_key, "unsigned-peer-key"))
case("dishonest coordinator", "secagg: model other than announced (hash mismatch)")(
    _sites_refuse("train", _other_model, "model-hash-mismatch", only_first=True))


@case("dishonest coordinator", "secagg: repeated unmask request")
def _repeated_unmask(tmp: Path) -> tuple[bool, str]:
    from flsuite import protocol

    grid, handlers, contexts, nodes, _result, _trained = _secure_round(tmp)
    node = nodes[0]
    unmask = next(m for m in grid.sent if m.metadata.dst_node_id == node and m.content["secagg"]["stage"] == "unmask")
    again = handlers[node](unmask, contexts[node])
    ok = again.has_error() and again.error.code == protocol.SECAGG_REFUSED and "repeated-unmask" in again.error.reason
    return ok, again.error.reason[:160] if again.has_error() else "answered again"


@case("dishonest coordinator", "study asks simulated sites for another delta")
def _other_delta(tmp: Path) -> tuple[bool, str]:
    from flsuite.config import compose_study
    from flsuite.site import prepare_simulated_sites

    prepare_simulated_sites(tmp, compose_study([f"sites_dir={tmp}", "experiment=smoke"]))
    study = compose_study([f"sites_dir={tmp}", "experiment=smoke", "privacy.delta=0.006"])
    return user_error(lambda: prepare_simulated_sites(tmp, study), must_name="site-0")


@case("dishonest coordinator", "study asks simulated sites for a higher cap")
def _higher_cap(tmp: Path) -> tuple[bool, str]:
    from flsuite import protocol
    from flsuite.config import compose_study
    from flsuite.site import prepare_simulated_sites, simulated_node_config

    first = compose_study([f"sites_dir={tmp}", "experiment=smoke"])
    prepare_simulated_sites(tmp, first)
    study = compose_study([f"sites_dir={tmp}", "experiment=smoke", f"privacy.max_epsilon={first.privacy.max_epsilon * 10}"])
    try:
        prepare_simulated_sites(tmp, study)
        cap = simulated_node_config(tmp, 0, study=study)[protocol.MAX_EPSILON]
    except Exception as err:  # noqa: BLE001 - refusing is handling it too
        from flsuite.errors import UserError

        return isinstance(err, UserError), f"{type(err).__name__}: {str(err)[:160]}"
    return cap == first.privacy.max_epsilon, f"the site keeps its cap {cap} (asked {study.privacy.max_epsilon})"


# ---------------------------------------------------------------------------------------------
# faults

_PUBLISHER = r'''
import sys
from flsuite.registry import Registry
from flsuite.registry.testing import publish_sample, sample_weights
path, key = sys.argv[1:3]
registry = Registry.open(path, signing_key_path=key)
print("ready", flush=True)
for _ in range(10000):
    latest = registry.latest(None)
    round_ = 1 if latest is None else latest.round + 1
    publish_sample(registry, round=round_, run_id="run-1", weights=sample_weights(float(round_), size=48))
'''


@case("faults", "kill -9 during publish (10 kills)", cli=True)
def _kill_publish(tmp: Path) -> tuple[bool, str]:
    import random

    from flsuite.registry import Registry, verify_registry

    script = tmp / "publisher.py"
    script.write_text(_PUBLISHER)
    path, key = tmp / "registry", tmp / "coordinator.pem"
    chance = random.Random(12)
    versions = 0
    for kill in range(10):
        child = subprocess.Popen([sys.executable, str(script), str(path), str(key)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, env=ENV)
        assert child.stdout is not None
        child.stdout.readline()
        time.sleep(chance.uniform(0.05, 0.6))
        child.send_signal(signal.SIGKILL)
        child.wait()
        report = verify_registry(path)
        if not report.ok:
            return False, f"after kill {kill + 1}: {report.verdict()[:160]}"
        with Registry.open(path) as registry:
            listed = [v.number for v in registry.versions()]
            for version in listed:
                registry.load_weights(version)
        if len(listed) < versions:
            return False, f"after kill {kill + 1}: {versions} versions became {len(listed)}"
        versions = len(listed)
    return True, f"10 kills, registry verified after each, {versions} whole versions"


@case("faults", "full disk during publish")
def _full_disk(tmp: Path) -> tuple[bool, str]:
    from flsuite.errors import FlsuiteError
    from flsuite.registry import registry as registry_module
    from flsuite.simulation import run_local_study

    real = registry_module.write_atomic
    calls = {"blobs": 0}

    def full(path, data, *, mode=0o644):
        if mode == 0o444:
            calls["blobs"] += 1
            if calls["blobs"] >= 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data, mode=mode)

    registry_module.write_atomic = full
    try:
        summary = run_local_study(_study(tmp), tmp / "out")
    except FlsuiteError as err:
        left = (tmp / "out" / "summary.json").is_file()
        return left, f"{type(err).__name__}: {str(err)[:140]}" + ("" if left else " (no summary.json)")
    except Exception as err:  # noqa: BLE001
        return False, f"unhandled {type(err).__name__}: {str(err)[:140]}; summary.json: {(tmp / 'out' / 'summary.json').is_file()}"
    finally:
        registry_module.write_atomic = real
    return summary["status"] != "completed", f"status {summary['status']}: {summary.get('message', '')[:140]}"


@case("faults", "impossible target (epsilon 0.01): refused or failed, never exit 0", cli=True)
def _impossible_target(tmp: Path) -> tuple[bool, str]:
    try:
        result = flsuite_cli("run", "experiment=smoke", "federation.rounds=1", "privacy.accountant=rdp",
                             f"sites_dir={tmp / 'sites'}", "privacy.target_epsilon=0.01", "--output-dir", str(tmp / "out"),
                             cwd=tmp, timeout=240)
    except subprocess.TimeoutExpired:
        return False, "still running after 240 s (one round)"
    said_completed = "completed" in result.stdout.lower() and result.returncode == 0
    ok = result.returncode in (2, 3) and not traceback_in(result)
    return ok, f"exit {result.returncode}" + (", says completed" if said_completed else "") + f": {last_line(result)}"


@case("faults", "sites reach their cap mid-study: aborted rounds exit 3", cli=True)
def _cap_reached(tmp: Path) -> tuple[bool, str]:
    result = flsuite_cli("run", "experiment=smoke", "federation.rounds=8", "privacy.accountant=rdp", "privacy.target_epsilon=null",
                         "privacy.noise_multiplier=1.5", "privacy.max_epsilon=4.0", f"sites_dir={tmp / 'sites'}",
                         "--output-dir", str(tmp / "out"), cwd=tmp, timeout=300)
    summary_file = tmp / "out" / "summary.json"
    status = json.loads(summary_file.read_text())["status"] if summary_file.is_file() else None
    ok = result.returncode == 3 and not traceback_in(result) and status not in (None, "completed")
    return ok, f"exit {result.returncode}, summary status {status}: {last_line(result)}"


# ---------------------------------------------------------------------------------------------
# secrets


@case("secrets", "PKI: CA key at 0644 refused")
def _ca_key(tmp: Path) -> tuple[bool, str]:
    from flsuite.pki import init_authority, issue_site

    init_authority(tmp / "pki")
    key = tmp / "pki" / "ca.key"
    key.chmod(0o644)
    return user_error(lambda: issue_site(tmp / "pki", "hospital-a"), must_name="chmod 600")


@case("secrets", "coordinator TLS key at 0644 refused")
def _tls_key(tmp: Path) -> tuple[bool, str]:
    from flsuite.coordinator import check_coordinator

    config = _federation(tmp).coordinator()
    config.tls.key.chmod(0o644)
    return user_error(lambda: check_coordinator(config), must_name="chmod 600")


@case("secrets", "site node-auth key at 0644 refused")
def _node_key(tmp: Path) -> tuple[bool, str]:
    from flsuite.site import check_site

    config = _federation(tmp).site("hospital-a")
    (config.bundle / "node-auth.key").chmod(0o644)
    return user_error(lambda: check_site(config, probe=False), must_name="chmod 600")


@case("secrets", "registry encryption key at 0644 refused")
def _encryption_key(tmp: Path) -> tuple[bool, str]:
    from flsuite.config import check_inputs, compose_study
    from flsuite.registry import create_key_file

    key = tmp / "blob.key"
    create_key_file(key)
    key.chmod(0o644)
    study = compose_study(["experiment=smoke", f"sites_dir={tmp / 'sites'}", f"registry.encryption_key_file={key}"])
    return user_error(lambda: check_inputs(study, tmp / "out"), must_name="chmod 600")


@case("secrets", "signing key kept outside the registry, 0600", cli=True)
def _signing_key(tmp: Path) -> tuple[bool, str]:
    result = flsuite_cli(*smoke(tmp), "--output-dir", str(tmp / "out"), cwd=tmp)
    if result.returncode != 0:
        return False, f"the study failed: exit {result.returncode}: {last_line(result)}"
    registry = tmp / "out" / "registry"
    keys = [p for p in (tmp / "out").rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()[:200]]
    inside = [str(p.relative_to(tmp / "out")) for p in keys if registry in p.parents]
    loose = [f"{p.name} {p.stat().st_mode & 0o777:o}" for p in keys if p.stat().st_mode & 0o077]
    return bool(keys) and not inside and not loose, f"private keys {[str(p.relative_to(tmp / 'out')) for p in keys]}" + (
        f", inside the registry {inside}" if inside else "") + (f", readable by others {loose}" if loose else "")


# ---------------------------------------------------------------------------------------------


def run_case(item: Case, root: Path) -> Result:
    folder = Path(tempfile.mkdtemp(prefix="case-", dir=root))
    started = time.monotonic()
    try:
        handled, detail = item.run(folder)
    except Exception as err:  # noqa: BLE001 - a crash of the staging is a not-handled case, shown
        handled, detail = False, f"crashed: {type(err).__name__}: {str(err)[:160]} @ {traceback.format_exc().splitlines()[-3].strip()[:80]}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result = Result(item.group, item.name, bool(handled), detail, round(time.monotonic() - started, 1))
    print(f"{'HANDLED' if result.handled else 'NOT HANDLED':11} [{item.group}] {item.name} ({result.seconds:.0f} s): {detail}",
          flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "robustness.json")
    parser.add_argument("--only", default="", help="comma-separated groups (default: all)")
    args = parser.parse_args(argv)
    groups = [g.strip() for g in args.only.split(",") if g.strip()] or list(GROUPS)
    unknown = set(groups) - set(GROUPS)
    if unknown:
        parser.error(f"unknown group(s) {sorted(unknown)}; groups: {', '.join(GROUPS)}")
    import torch

    torch.set_num_threads(1)
    chosen = [c for c in CASES if c.group in groups]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="flsuite-robustness-") as root:
        with ThreadPoolExecutor(max_workers=2) as pool:  # CLI cases: two subprocesses at a time
            futures = [pool.submit(run_case, c, Path(root)) for c in chosen if c.subprocess]
            cli_results = [f.result() for f in futures]
        in_process = [run_case(c, Path(root)) for c in chosen if not c.subprocess]
    by_name = {(r.group, r.case): r for r in cli_results + in_process}
    results = [by_name[(c.group, c.name)] for c in chosen]
    table = {g: {"tried": sum(r.group == g for r in results), "handled": sum(r.group == g and r.handled for r in results)}
             for g in groups}
    print(f"\n{'group':28} {'tried':>5} {'handled':>7}")
    for group, counts in table.items():
        print(f"{group:28} {counts['tried']:>5} {counts['handled']:>7}")
    total = {"tried": len(results), "handled": sum(r.handled for r in results)}
    print(f"{'total':28} {total['tried']:>5} {total['handled']:>7}   ({time.monotonic() - started:.0f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"groups": table, "total": total, "cases": [asdict(r) for r in results],
                                    "wall_s": round(time.monotonic() - started, 1)}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
