"""Everything the coordinator does: plan a study's privacy, run its rounds (secure
aggregation wraps a round), aggregate with Flower's strategies, publish to the registry,
write the study's outputs; and, in deployment, run the SuperLink and launch studies.

Modules: ``study`` (the ServerApp body), ``rounds`` (the round loop), ``reply_records`` (a train
reply's status and DP event, parsed once for all its checks), ``cohort``,
``strategies``, ``secure_round``, ``planning``, ``publishing``, ``outputs``, ``progress``, ``resume``,
``polling`` (send-and-receive at the network's pace),
``flower_run`` (what `flwr run .` needs prepared),
``app`` (the ServerApp), ``superlink``, ``launch`` and ``submit`` (deployment).
Names load on first use, so the operator commands do not import torch.
"""

from flsuite.lazy import lazy_exports

_EXPORTS = {
    "build_server_app": "app",
    "choose_cohort": "cohort",
    "RoundRecord": "rounds",
    "RoundLoop": "rounds",
    "SiteReport": "rounds",
    "StudyResult": "rounds",
    "secure_train_round": "secure_round",
    "SecureRoundResult": "secure_round",
    "SecureTrainRound": "secure_round",
    "PlainTrainRound": "rounds",
    "PrivacyPlan": "planning",
    "plan_privacy": "planning",
    "query_status": "planning",
    "RegistryPublisher": "publishing",
    "StudyOutputs": "outputs",
    "prepare_resume": "resume",
    "run_study": "study",
    "PromptGrid": "polling",
    "prepare_run": "flower_run",
    "prompt_grid": "polling",
    "CoordinatorState": "superlink",
    "check_coordinator": "superlink",
    "start_coordinator": "superlink",
    "stop_coordinator": "superlink",
    "LaunchPlan": "launch",
    "plan_launch": "launch",
    "check_coordinator_answers": "launch",
    "submit_study": "submit",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
