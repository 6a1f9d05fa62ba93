"""A study's searcher and early stopper, built from its plan through the plugin registry."""

from __future__ import annotations

from typing import Any

from tuneyard.plugins.api import Choice
from tuneyard.plugins.manager import PluginRegistry
from tuneyard.server.study.spec import StudyPlan
from tuneyard.server.study.stopping import StopperLedger


def max_epochs(plan: StudyPlan) -> int:
    """The most epochs any trial may train: training.epochs, or the top of its searched range."""
    most = int(plan.spec["training"]["epochs"])
    for param in plan.space:
        if param.name == "training.epochs":
            domain = param.domain
            most = max(int(v) for v in domain.values) if isinstance(domain, Choice) else int(domain.high)
    return most


def build_search(plan: StudyPlan, registry: PluginRegistry) -> tuple[Any, StopperLedger]:
    """The searcher, and the early stopper (none without `early_stopping`) in its ledger."""
    searcher_spec = plan.spec["searcher"]
    searcher = registry.create(
        "searcher",
        searcher_spec["name"],
        searcher_spec["options"],
        space=plan.space,
        objective=plan.objective,
        seed=plan.seed,
    )
    stopper = None
    if plan.spec.get("early_stopping"):
        es = plan.spec["early_stopping"]
        stopper = registry.create(
            "early_stopper", es["name"], es["options"], objective=plan.objective, max_epochs=max_epochs(plan)
        )
    return searcher, StopperLedger(stopper, plan.objective)
