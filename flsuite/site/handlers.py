"""What a site does when the coordinator asks: train, evaluate, or report its status.

``flsuite.site.app`` wires these handlers to Flower. A site reads the study settings
from the run_config, and its own data, privacy cap and ledger from its node config: the
site's own settings win. DP-SGD training is in ``privacy_guard``. Every reply is built
from the contract's types (``flsuite.protocol``).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from functools import lru_cache

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from flsuite import protocol
from flsuite.config.bridge import from_run_config
from flsuite.config.schema import DataConfig, StudyConfig
from flsuite.data.datasets import Dataset
from flsuite.data.feature_ranges import load_site_csv
from flsuite.data.site_cache import prepare_once
from flsuite.data.study_data import model_shape, split_study
from flsuite.errors import PlanError
from flsuite.models.weights import load_arrays
from flsuite.models.zoo import build_model
from flsuite.site.evaluation import training_part
from flsuite.site.replies import refusal_reply, train_reply
from flsuite.training.local import evaluate, train_plain


@dataclass(frozen=True)
class SiteSetup:
    """A site's view of the study: who it is, its records and the study settings."""

    name: str
    index: int
    data: Dataset  # the records the site trains on (and declares)
    study: StudyConfig
    holdout: Dataset | None = None  # records held out for private per-site evaluation (``evaluation``)


def site_setup(context: Context) -> SiteSetup:
    """Resolve the site's identity and records from its node config and the run_config."""
    if not context.run_config:
        raise PlanError("the site received no run_config: start the study with flsuite or `flwr run`")
    study = from_run_config(context.run_config)
    node = context.node_config
    if protocol.DATA_PATH in node:
        path = str(node[protocol.DATA_PATH])
        label_column = str(node.get(protocol.LABEL_COLUMN, study.data.label_column or "label"))
        given = node.get(protocol.SITE_NAME)
        given_name = None if given is None else str(given)
        # Read, scaled and split once per process for this file version and these settings (the data
        # section holds the ranges, split seed and class count), not again for every message.
        settings = (label_column, given_name, study.data.model_dump_json(), study.site_evaluation,
                    study.monitoring.holdout_fraction)
        name, train, holdout = prepare_once(path, settings, lambda: _csv_site_data(path, study, label_column, given_name))
        index = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
        return SiteSetup(name=name, index=index, data=train, study=study, holdout=holdout)
    index = int(node.get(protocol.PARTITION_ID, 0))
    data = _simulated_site_data(study.data.model_dump_json(), study.federation.num_sites, index)
    name = str(node.get(protocol.SITE_NAME, f"site-{index}"))
    train, holdout = training_part(study, name, data)
    return SiteSetup(name=name, index=index, data=train, study=study, holdout=holdout)


def _csv_site_data(
    path: str, study: StudyConfig, label_column: str, given_name: str | None
) -> tuple[str, Dataset, Dataset | None]:
    """A CSV site's name, training records and held-out records."""
    # The coordinator's model has data.num_classes outputs: a label beyond it is refused here, naming the line.
    # Features are scaled with the study's declared ranges (refused without them), as at the coordinator;
    # under a built-in dataset they must already be in its scaled range (raw values are refused).
    data = load_site_csv(path, study.data, label_column=label_column)
    name = given_name if given_name is not None else data.name
    train, holdout = training_part(study, name, data)
    return name, train, holdout


@lru_cache(maxsize=16)
def _simulated_site_data(data_config_json: str, num_sites: int, index: int) -> Dataset:
    return split_study(DataConfig.model_validate_json(data_config_json), num_sites).sites[index]


def site_model(setup: SiteSetup) -> torch.nn.Module:
    shape = model_shape(setup.study.data, setup.data)
    return build_model(
        setup.study.model,
        num_features=shape.num_features,
        num_classes=shape.num_classes,
        image_shape=shape.image_shape,
        seed=setup.study.seed,
    )


def local_seed(study_seed: int, server_round: int, site_index: int) -> int:
    """A seed per study, round and site, the same on every engine: for non-private shuffling only."""
    text = json.dumps([study_seed, server_round, site_index])
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


def requires_privacy(context: Context) -> bool:
    """A site with its own privacy cap only answers with differentially private results."""
    return protocol.MAX_EPSILON in context.node_config


def _privacy_required(msg: Message, setup: SiteSetup, what: str) -> Message:
    return refusal_reply(
        msg,
        protocol.Refusal(
            kind="privacy-required",
            site=setup.name,
            message=f"site {setup.name!r} has a privacy cap and does not {what} without DP-SGD; the study has privacy.enabled=false",
        ),
    )


def handle_train(msg: Message, context: Context) -> Message:
    """Train the received global model on the site's records and reply with the new weights."""
    torch.set_num_threads(1)
    setup = site_setup(context)
    if not setup.study.privacy.enabled and requires_privacy(context):
        return _privacy_required(msg, setup, "train")
    config = msg.content[protocol.CONFIG]
    server_round = int(config.get(protocol.SERVER_ROUND, 0))
    model = site_model(setup)
    load_arrays(model, msg.content[protocol.ARRAYS])
    # FedProx's mu arrives in the train config (Flower's FedProx puts it there); 0 is plain FedAvg.
    proximal_mu = float(config.get(protocol.PROXIMAL_MU, 0.0))
    if setup.study.privacy.enabled:
        # DP-SGD never takes a seed: its sampling and noise come from fresh OS entropy for every
        # request, so no study seed or round can make two releases share their noise.
        from flsuite.site.privacy_guard import train_private

        sigma = config.get(protocol.NOISE_MULTIPLIER, setup.study.privacy.noise_multiplier)
        if sigma is None:
            raise PlanError(f"site {setup.name!r} received no noise multiplier for DP-SGD: it was not in the coordinator's plan")
        return train_private(msg, context, setup=setup, model=model, noise_multiplier=float(sigma), proximal_mu=proximal_mu)
    # Non-private training: simulated sites shuffle with a seed (reproducible studies), a real site from its own entropy.
    seed = local_seed(setup.study.seed, server_round, setup.index) if protocol.PARTITION_ID in context.node_config else None
    training = setup.study.training
    started = time.perf_counter()
    result = train_plain(
        model,
        setup.data,
        epochs=training.local_epochs,
        batch_size=training.batch_size,
        optimizer=training.optimizer,
        learning_rate=training.learning_rate,
        seed=seed if seed is not None else secrets.randbits(63),
        proximal_mu=proximal_mu,
    )
    metrics = {protocol.NUM_EXAMPLES: result.examples, protocol.TRAIN_LOSS: result.mean_loss, protocol.TRAIN_SECONDS: time.perf_counter() - started}
    return train_reply(msg, model=model, metrics=metrics, status=protocol.SiteStatus(name=setup.name, records=len(setup.data)))


def handle_evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the site's own records (not at a site with a privacy cap:
    exact metrics on its records are not differentially private), or, when the request asks for
    ``SITE_EVALUATION`` in a study with monitoring, release private held-out counts (``evaluation``)."""
    torch.set_num_threads(1)
    setup = site_setup(context)
    private = bool(msg.content[protocol.CONFIG].get(protocol.SITE_EVALUATION, False)) if protocol.CONFIG in msg.content else False
    if private and setup.study.site_evaluation:  # noisy held-out counts, accounted in the site's ledger
        from flsuite.site.evaluation import evaluate_private

        model = site_model(setup)
        load_arrays(model, msg.content[protocol.ARRAYS])
        return evaluate_private(msg, context, setup=setup, model=model)
    if requires_privacy(context):
        return _privacy_required(msg, setup, "report metrics on its records")
    model = site_model(setup)
    load_arrays(model, msg.content[protocol.ARRAYS])
    metrics = evaluate(model, setup.data)
    metrics[protocol.NUM_EXAMPLES] = len(setup.data)
    status = protocol.SiteStatus(name=setup.name, records=len(setup.data))
    content = RecordDict({protocol.METRICS: MetricRecord(metrics), protocol.SITE: ConfigRecord(status.to_record())})
    return Message(content, reply_to=msg)


def handle_query(msg: Message, context: Context) -> Message:
    """Tell the coordinator what planning needs: the site's name, size and privacy status."""
    setup = site_setup(context)
    status = protocol.SiteStatus(name=setup.name, records=len(setup.data))
    if setup.study.privacy.enabled:
        from flsuite.site.privacy_guard import site_privacy

        status = site_privacy(context.node_config, site=setup.name, labels=setup.data.labels, study=setup.study).status()
    return Message(RecordDict({protocol.SITE: ConfigRecord(status.to_record())}), reply_to=msg)
