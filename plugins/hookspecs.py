"""The hooks a tuneyard plugin implements (pluggy project ``tuneyard``).

A plugin is a module (or any object) with functions decorated by ``@hookimpl``, exposed
through the ``tuneyard`` entry-point group::

    # pyproject.toml of your package
    [project.entry-points.tuneyard]
    my_plugin = "my_package.tuneyard_plugin"

    # my_package/tuneyard_plugin.py
    from tuneyard.plugins import hookimpl
    from tuneyard.plugins.api import Bounds

    def lion(params, *, lr: float = 1e-4, weight_decay: float = 0.0):
        '''Lion optimizer.

        Args:
            lr: learning rate.
            weight_decay: decoupled weight decay.
        '''
        return Lion(params, lr=lr, weight_decay=weight_decay)

    @hookimpl
    def tuneyard_register_optimizers(register):
        register("lion", lion, bounds={"lr": Bounds(gt=0), "weight_decay": Bounds(ge=0)})

Registration hooks are called once, when the server starts (built-ins first, then entry
points). Each receives a ``register`` callback and returns nothing; the core can add keyword
arguments to ``register`` later without breaking plugins.

A factory's keyword-only parameters are its user-settable options: their annotations
(``int``, ``float``, ``bool``, ``str``, ``list``, ``dict``; ``X | None`` counts as ``X``) and
defaults become the parameter schema that ``ListPlugins`` shows and that study specs are
validated against, and an ``Args:`` section of the docstring (Google style, ``name: text``)
documents them. The docstring's first line is the default description. Names in
``tuneyard.plugins.api.INJECTED[kind]`` are supplied by the framework, not by users.

The sequence for one trial (all plugin objects see plain values and frozen views)::

    searcher.suggest(trial_id) -> config          suggest  (None: the space is exhausted)
    tuneyard_on_trial_start(...)                   observers
    trainer: dataset, augmentations, model, optimizer, lr scheduler, task built from the registry
             (or the trial's trainable called with its options and a TrialContext)
    per epoch (step): tuneyard_on_trial_report(...)  run + report
               early_stopper.report(...) -> Decision.CONTINUE | Decision.STOP   decide
               (a population stopper: record(...), then exploit(...) -> Exploit | None)
    early_stopper.complete(trial_id, value)
    searcher.observe(trial_id, state, value)       observe
    tuneyard_on_trial_end(...)                     observers
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import pluggy

from tuneyard.plugins.api import Bounds

PROJECT = "tuneyard"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Register(Protocol):
    """The callback every ``tuneyard_register_*`` hook receives."""

    def __call__(
        self,
        name: str,
        factory: Callable[..., Any],
        description: str = "",
        *,
        bounds: Mapping[str, Bounds] | None = None,
        **extra: Any,
    ) -> None:
        """Register ``factory`` under ``name`` for this hook's kind.

        ``name`` must be unique within its kind and contain no dots or whitespace (it appears in
        search-space paths such as ``augmentations.<name>.<option>``). ``description`` defaults
        to the first line of the factory's docstring. ``bounds`` limits numeric options, e.g.
        ``bounds={"grace_period": Bounds(ge=1), "momentum": Bounds(ge=0, lt=1)}`` (``Bounds`` from
        ``tuneyard.plugins.api``: ``ge``/``le`` inclusive, ``gt``/``lt`` exclusive): the server
        refuses a spec whose fixed value, choice value or searched range leaves them, with
        INVALID_ARGUMENT naming the option, before anything runs, and ``ListPlugins`` shows them.
        Only ``int`` and ``float`` options take bounds, and the default must lie inside. ``extra``
        holds kind-specific flags, e.g. ``batch_level=True`` for an augmentation that transforms
        whole batches (MixUp). A duplicate or invalid registration (an invalid ``bounds`` too) is
        reported as a load error; the first one wins.
        """


# --------------------------------------------------------------------------------------------
# Registration hooks: called once per plugin at server start-up, in the server process.
# --------------------------------------------------------------------------------------------


@hookspec
def tuneyard_register_optimizers(register: Register) -> None:
    """Register optimizer factories.

    Factory: ``(params, *, lr: float = ..., **options) -> torch.optim.Optimizer``.
    ``params`` is the model's parameter iterable (positional); every keyword-only parameter
    is a user option.
    """


@hookspec
def tuneyard_register_lr_schedulers(register: Register) -> None:
    """Register learning-rate scheduler factories.

    Factory: ``(optimizer, *, epochs: int, steps_per_epoch: int, **options)
    -> torch.optim.lr_scheduler.LRScheduler``. ``epochs`` and ``steps_per_epoch`` are
    injected. Register with ``interval="batch"`` to be stepped after every optimizer step,
    or ``interval="epoch"`` (the default) after every epoch; ``monitor="val_loss"`` makes the
    trainer call ``scheduler.step(metrics["val_loss"])`` (ReduceLROnPlateau). The trainer
    never looks at a schedule's name.
    """


@hookspec
def tuneyard_register_augmentations(register: Register) -> None:
    """Register data augmentation factories.

    Factory: ``(*, **options) -> Callable[[Tensor], Tensor]``: a per-sample transform of a
    float CHW tensor, applied to the training split only, before normalisation. It may
    accept the injected ``input_shape: tuple[int, ...]`` (C, H, W) and ``num_classes``.
    Register with ``batch_level=True`` for a transform of whole batches instead (MixUp,
    CutMix): ``(images, labels) -> (images, soft_labels)`` with soft labels of shape
    ``(N, num_classes)``, applied on the trial's device after normalisation.
    """


@hookspec
def tuneyard_register_models(register: Register) -> None:
    """Register model factories.

    Factory: ``(*, input_shape: tuple[int, ...], num_classes: int, **options)
    -> torch.nn.Module``, mapping a batch ``(N, *input_shape)`` to logits ``(N, num_classes)``.
    ``input_shape`` and ``num_classes`` are injected from the dataset. If the module has
    an ``on_epoch_start(epoch)`` method the trainer calls it before every epoch (from 1),
    e.g. to unfreeze a fine-tuned backbone. ``register(..., fusable_options=["dropout"])``
    names options that change no layer and no tensor shape: the members of a fused group
    (``resources.fuse``) may differ in them.
    """


@hookspec
def tuneyard_register_datasets(register: Register) -> None:
    """Register dataset factories.

    Factory: ``(*, root: str, **options) -> tuneyard.plugins.api.DatasetSplits``.
    ``root`` is the server's ``--data-root`` folder; a dataset reads and writes only there.
    Register with ``task="regression"`` (or another task plugin's name; "classification" by
    default) to say what its targets are; the splits' ``task`` must say the same.
    """


@hookspec
def tuneyard_register_searchers(register: Register) -> None:
    """Register searcher factories.

    Factory: ``(*, space: tuple[Parameter, ...], objective: Objective, seed: int, **options)
    -> tuneyard.plugins.api.Searcher``. All three arguments are injected. The searcher must
    be deterministic given ``seed`` and resumable through ``state_dict``/``load_state_dict``.
    """


@hookspec
def tuneyard_register_early_stoppers(register: Register) -> None:
    """Register early-stopping factories.

    Factory: ``(*, objective: Objective, max_epochs: int, **options)
    -> tuneyard.plugins.api.EarlyStopper``. ``objective`` and ``max_epochs`` (the most epochs a
    trial of the study may train) are injected. ``report(trial_id, epoch, value)`` is called after
    every epoch of every trial, interleaved across concurrent trials; on ``Decision.STOP`` the
    trial ends PRUNED with its last metrics. ``complete(trial_id, value)`` follows when any trial
    ends (value None when it failed). ``space`` (the searched parameters it may change) and
    ``study_seed`` are injected too, for a population stopper (PBT, `tuneyard.plugins.population`):
    one with ``record`` and ``exploit`` is told its decision epochs and asked for an ``Exploit``
    instead, and never stops a trial.
    """


@hookspec
def tuneyard_register_trainables(register: Register) -> None:
    """Register trainables: a user's own training function, run in place of the built-in trainer.

    Factory: ``(*, trial: tuneyard.plugins.api.TrialContext, **options) -> dict[str, float] | None``.
    ``trial`` is injected, and so is ``epochs`` (``training.epochs``, the most steps a trial
    reports) when the factory declares it; every other keyword-only parameter is a user option,
    set in the spec's ``trainable.options`` and searched as ``trainable.<option>``. The function
    trains on ``trial.device`` with ``trial.threads``, calls ``trial.report(step, metrics)`` after
    each step (``tuneyard.plugins.api.Pruned`` ends it early), keeps what a resumed run needs in
    ``trial.checkpoint_dir``, and returns the final metrics (None: the last reported). It runs in a
    worker process, so it imports torch (or anything else) itself. Raise
    ``tuneyard.plugins.api.Infeasible`` for a configuration that cannot run.
    """


@hookspec
def tuneyard_register_tasks(register: Register) -> None:
    """Register tasks: the built-in trainer's loss and metrics for one kind of target.

    Factory: ``(*, num_classes: int, label_smoothing: float, **options) -> tuneyard.plugins.api.Task``
    (both injected: the dataset's output width and ``training.label_smoothing``). Register with
    ``metrics={"mse": "min", "r2": "max"}``: the metrics the task computes, without the split prefix,
    and whether lower or higher is better; they decide which objectives a spec may name. A dataset
    declares its task when it registers (``register("diabetes", factory, task="regression")``; a
    dataset with a ``task`` option, such as ``csv``, takes it from there); the spec's optional
    ``task {options}`` sets the task's options, searched as ``task.<option>``.
    """


# --------------------------------------------------------------------------------------------
# Trial observers: called in the server process by the study runner. They only observe:
# their return values are ignored and an exception is logged, never raised.
# --------------------------------------------------------------------------------------------


@hookspec
def tuneyard_on_trial_start(study_id: str, trial_id: int, config: dict[str, Any]) -> None:
    """Called when a trial is about to run.

    ``study_id``: the study's id. ``trial_id``: the trial's number within the study.
    ``config``: the searcher's suggestion (parameter name -> plain value); a copy.
    """


@hookspec
def tuneyard_on_trial_report(study_id: str, trial_id: int, epoch: int, metrics: dict[str, float]) -> None:
    """Called after each epoch of a trial, once its metrics are stored.

    ``epoch``: 1-based epoch number. ``metrics``: e.g. ``{"val_accuracy": 0.97, "val_loss": 0.1,
    "train_accuracy": ..., "train_loss": ...}``.
    """


@hookspec
def tuneyard_on_trial_end(study_id: str, trial_id: int, state: str, metrics: dict[str, float]) -> None:
    """Called once when a trial ends, after the searcher has observed it.

    ``state``: "COMPLETED", "PRUNED" (stopped early), "FAILED" or "CANCELLED".
    ``metrics``: the trial's final metrics (empty when it failed before any epoch).
    """
