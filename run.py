"""Train and evaluate a prompt-based continual learner: ``python run.py dataset=imr backbone=ibot21k``.

Data parallel: ``torchrun --nproc_per_node=N run.py ...`` (train.batch_size stays the global batch).
"""

import os
import sys
import tempfile

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from norga.config import register

register()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from norga.engine.run import run

    metrics = run(cfg, HydraConfig.get().runtime.output_dir)
    return metrics.get("final_avg_acc")  # for sweepers that optimise it (only rank 0 has it)


if __name__ == "__main__":
    if int(os.environ.get("RANK", "0")) > 0:
        # Under torchrun only rank 0 writes outputs; Hydra makes a run dir in every process, so the other
        # ranks get a scratch one instead of a stray folder under outputs/.
        sys.argv += [f"hydra.run.dir={tempfile.mkdtemp(prefix='norga-rank')}", "hydra.output_subdir=null"]
    main()
