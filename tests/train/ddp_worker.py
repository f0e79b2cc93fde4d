"""Run by ``torchrun`` in test_ddp.py: train SimCLR on tiny data, save this rank's weights."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from sslpoison.data.synthetic import synthetic
from sslpoison.ssl.pretrain import PretrainConfig, pretrain
from sslpoison.train import dist


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_from_env(torch.device("cpu"))
    assert dist.world_size() == 2, "expected 2 processes"
    data = synthetic(n=64, num_classes=4, size=16, channels=1, seed=0)
    cfg = PretrainConfig.model_validate(
        {
            "method": "simclr",
            "backbone": {"width": 0.125},
            "train": {
                "epochs": 2,
                "batch_size": 16,
                "progress": False,
                "optimizer": {"name": "sgd", "lr": 0.05},
            },
        }
    )
    encoder, result = pretrain(data, cfg, seed=0, checkpoint_dir=out / "ckpt")
    state = {
        k: v.contiguous()
        for k, v in encoder.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    save_file(state, str(out / f"rank{dist.rank()}.safetensors"))
    (out / f"rank{dist.rank()}.steps").write_text(str(result.steps))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
