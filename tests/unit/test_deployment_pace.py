"""Issue 14.3: a deployment at the network's pace, and 14.4's path anchoring.

The coordinator pulls replies every 0.2 s instead of Flower's 3 s (PromptGrid), a site's
SuperNode polls every 0.5 s instead of 3 s (flsuite.flower.supernode), Flower's SuperExec every
0.2 s instead of 1 s; relative paths of a `flwr run .` study resolve under $FLSUITE_HOME.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from flsuite.config import anchored_paths, flsuite_home
from flsuite.coordinator.app import build_server_app
from flsuite.coordinator.polling import PromptGrid, prompt_grid
from flsuite.deployment.processes import flower_environment
from flsuite.flower import InProcessGrid
from flsuite.flower import supernode as node_entry


class _Metadata:
    def __init__(self, reply_to: str, message_type: str = "query") -> None:
        self.reply_to_message_id = reply_to
        self.message_type = message_type


class _Msg:
    def __init__(self, reply_to: str = "", message_type: str = "query") -> None:
        self.metadata = _Metadata(reply_to, message_type)


class SlowGrid:
    """A deployment Grid stand-in: reply i arrives after `arrive[i]` seconds on a fake clock."""

    def __init__(self, arrive: list[float]) -> None:
        self.now = 0.0
        self.arrive = {f"m{i}": at for i, at in enumerate(arrive)}
        self.sleeps: list[float] = []
        self.pulls = 0

    def push_messages(self, messages):
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        self.pulls += 1
        return [_Msg(reply_to=i) for i in sorted(ids) if self.arrive[i] <= self.now]

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def prompt(slow: SlowGrid, interval: float = 0.2) -> PromptGrid:
    return PromptGrid(slow, pull_interval_s=interval, clock=lambda: slow.now, sleep=slow.sleep)  # type: ignore[arg-type]


def test_replies_are_collected_within_one_pull_interval_of_the_last_arrival():
    # Flower's deployment Grid sleeps 3 s between pulls: a reply at 0.5 s is seen at 3 s.
    slow = SlowGrid([0.5, 1.1, 1.15])
    replies = prompt(slow).send_and_receive([_Msg(), _Msg(), _Msg()], timeout=60)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert slow.now < 1.15 + 0.2 + 1e-9
    assert max(slow.sleeps) <= 0.2


def test_the_timeout_returns_the_replies_that_arrived_and_is_never_overslept():
    slow = SlowGrid([0.3, 100.0])
    replies = prompt(slow, interval=0.7).send_and_receive([_Msg(), _Msg()], timeout=2.0)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert slow.now == pytest.approx(2.0)  # the last sleep is cut to the deadline


def test_no_timeout_waits_for_every_reply():
    slow = SlowGrid([5.0])
    assert len(prompt(slow).send_and_receive([_Msg()], timeout=None)) == 1


def test_a_non_positive_interval_is_refused():
    with pytest.raises(ValueError, match="pull_interval_s"):
        PromptGrid(SlowGrid([]), pull_interval_s=0)  # type: ignore[arg-type]


def test_the_in_process_grid_is_left_alone_and_others_are_wrapped_once():
    inline = object.__new__(InProcessGrid)
    assert prompt_grid(inline) is inline
    wrapped = prompt_grid(SlowGrid([]))  # type: ignore[arg-type]
    assert isinstance(wrapped, PromptGrid) and prompt_grid(wrapped) is wrapped


def test_the_server_app_runs_the_study_on_the_prompt_grid(monkeypatch):
    seen = []

    def fake_run_study(grid, context):
        seen.append(grid)
        return {"status": "completed"}

    monkeypatch.setattr("flsuite.coordinator.study.run_study", fake_run_study)
    monkeypatch.setattr("flsuite.coordinator.flower_run.prepare_run", lambda grid, context: None)
    app = build_server_app()
    main = app._main  # the function registered with @app.main()
    main(SlowGrid([]), object())
    assert isinstance(seen[0], PromptGrid)


def test_the_supernode_entry_shortens_flowers_idle_poll_and_local_wait_only(monkeypatch):
    from flwr.supernode import start_client_internal as module

    node_entry.check_patch()  # the installed Flower still has the sleep this entry point shortens
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    monkeypatch.setattr(module, "time", module.time)  # restored after the test
    monkeypatch.setattr(module, "subprocess", module.subprocess)
    node_entry.patch(0.5)
    module.time.sleep(3)  # idle poll
    module.time.sleep(0.5)  # the wait for the ClientApp's reply in the node's own state
    assert slept == [0.5, 0.1]
    assert module.time.monotonic is time.monotonic
    module.time.sleep(1)
    assert slept[-1] == 1


@pytest.mark.parametrize(("raw", "expected"), [(None, 0.5), ("", 0.5), ("0.25", 0.25), ("3", 3.0)])
def test_the_node_poll_comes_from_the_environment(raw, expected):
    environ = {} if raw is None else {node_entry.NODE_POLL_ENV: raw}
    assert node_entry.idle_poll_s(environ) == expected


@pytest.mark.parametrize("raw", ["0", "nan", "10", "fast"])
def test_a_bad_node_poll_is_refused_naming_the_variable(raw):
    with pytest.raises(SystemExit, match=node_entry.NODE_POLL_ENV):
        node_entry.idle_poll_s({node_entry.NODE_POLL_ENV: raw})


def test_a_site_runs_its_supernode_through_the_shorter_poll_entry():
    from flsuite.site import node

    assert node.NODE_MODULE == node_entry.__name__


def test_flower_processes_poll_superexec_tasks_at_0_2_s_unless_the_operator_set_it(monkeypatch):
    monkeypatch.delenv("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", raising=False)
    assert flower_environment()["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "0.2"
    monkeypatch.setenv("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "2")
    assert flower_environment()["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "2"


def test_relative_paths_resolve_under_flsuite_home_not_where_flower_started(tmp_path):
    root = flsuite_home({"FLSUITE_HOME": str(tmp_path)})
    assert root == tmp_path
    config = {"sites_dir": ".flsuite/sites", "output_dir": "", "data.csv_path": "", "registry.path": "/abs/reg",
              "federation.rounds": 3}
    changed = anchored_paths(config, root=root, run_id=7)
    assert changed == {"sites_dir": str(tmp_path / ".flsuite/sites"), "output_dir": str(tmp_path / "outputs" / "run-7")}
    assert anchored_paths({**config, **changed}, root=root, run_id=7) == {}  # anchoring twice changes nothing


def test_flsuite_home_defaults_to_a_folder_in_the_users_home():
    assert flsuite_home({}) == Path("~/flsuite").expanduser()


def test_the_clientapp_of_a_secure_aggregation_stage_loads_no_torch():
    # Each message starts a fresh ClientApp process in deployment: importing torch costs ~2 s of
    # every stage. Only the train and evaluate handlers may load it.
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    code = ("import sys, clients.app, flsuite.site.secure_aggregation, flsuite.site.simulated; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'opacus'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True,  # noqa: S603
                         env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_simulated_site_anchors_relative_paths_without_changing_the_run_config(tmp_path, monkeypatch):
    # Flower's simulation raises "The `run_config` field of the `Context` object cannot be
    # modified" when a ClientApp leaves it changed: the mod must put it back.
    from flwr.app import Context, RecordDict

    from flsuite.site.simulated import simulated_site_mod

    monkeypatch.setenv("FLSUITE_HOME", str(tmp_path))
    run_config = {"sites_dir": ".flsuite/sites", "output_dir": ""}
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=dict(run_config))
    seen = []

    def call_next(msg, ctx):
        seen.append(dict(ctx.run_config))
        return "reply"

    assert simulated_site_mod(None, context, call_next) == "reply"  # type: ignore[arg-type]
    assert seen[0]["sites_dir"] == str(tmp_path / ".flsuite" / "sites")  # the handlers see the anchored path
    assert context.run_config == run_config
