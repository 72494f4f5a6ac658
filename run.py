"""Train and evaluate a prompt-based continual learner: ``python run.py dataset=imr backbone=ibot21k``."""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from norga.config import register

register()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from norga.engine.run import run

    metrics = run(cfg, HydraConfig.get().runtime.output_dir)
    return metrics["final_avg_acc"]


if __name__ == "__main__":
    main()
