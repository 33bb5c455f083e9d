"""`python -m common.model_card [--json] [--project P]`: live parameter counts of every experiment's networks.

For every project (`conf/<p>/train.yaml`) and each of its experiments (`conf/<p>/experiment/*.yaml`), the
LightningModule is built from the composed config and the parameters of each top-level sub-network are counted
(all parameters, frozen ones included: a frozen texture proxy is still part of the network). The paper's figure
comes from the experiment's `reference_params` (null where the paper gives none, e.g. reduced-width demos).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import common.run  # noqa: F401  (registers the config resolvers)
from common.checkpoint import instantiate_model

CONF_ROOT = Path(__file__).resolve().parents[1] / "conf"


def projects() -> list[str]:
    """Returns the projects that have a primary config."""
    return sorted(p.parent.name for p in CONF_ROOT.glob("*/train.yaml"))


def experiments(project: str) -> list[str]:
    """Returns the experiment names of a project."""
    return sorted(p.stem for p in (CONF_ROOT / project / "experiment").glob("*.yaml"))


def compose_experiment(project: str, experiment: str, overrides: list[str] | None = None):
    """Returns the composed config of `conf/<project>/train.yaml` with `experiment=<experiment>`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_ROOT / project), version_base="1.3"):
        return compose("train", overrides=[f"experiment={experiment}", "paths.output_dir=/tmp/model_card",
                                           *(overrides or [])])


def count_networks(module: torch.nn.Module) -> dict[str, int]:
    """Returns {network name: parameter count}.

    A module that knows its sub-networks better than its attribute layout does (e.g. two stages stored in one
    state dict under the reference's names) defines `network_parameter_counts() -> dict[str, int]`; otherwise
    each top-level child that holds parameters is one network.
    """
    if hasattr(module, "network_parameter_counts"):
        return dict(module.network_parameter_counts())  # type: ignore[operator]
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in module.named_children()}
    return {name: n for name, n in counts.items() if n > 0}


def card_rows(project: str, experiment: str) -> list[dict]:
    """Returns one row per network of one experiment: project, experiment, network, params, reference."""
    cfg = compose_experiment(project, experiment)
    try:  # on the meta device nothing is allocated (the RSTN paper network alone is 1 GB of float32)
        with torch.device("meta"):
            module = instantiate_model(cfg.model)
    except Exception:  # a module that computes or loads at construction time: build it for real
        module = instantiate_model(cfg.model)
    reference = dict(cfg.get("reference_params") or {})
    rows = [{"project": project, "experiment": experiment, "network": name, "params": n,
             "reference": reference.pop(name, None)} for name, n in count_networks(module).items()]
    # figures the paper gives for a whole that has no single child (e.g. a total)
    rows += [{"project": project, "experiment": experiment, "network": name, "params": None, "reference": ref}
             for name, ref in reference.items()]
    del module
    gc.collect()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows")
    parser.add_argument("--project", nargs="*", help="only these projects")
    args = parser.parse_args(argv)
    rows = []
    for project in args.project or projects():
        for experiment in experiments(project):
            rows += card_rows(project, experiment)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'project':<12} {'experiment':<18} {'network':<26} {'params':>13} {'reference':>13}  match")
    for r in rows:
        params = "" if r["params"] is None else f"{r['params']:,}"
        ref = "" if r["reference"] is None else f"{r['reference']:,}"
        match = "" if r["reference"] is None or r["params"] is None else ("yes" if r["params"] == r["reference"]
                                                                         else "NO")
        print(f"{r['project']:<12} {r['experiment']:<18} {r['network']:<26} {params:>13} {ref:>13}  {match}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
