"""SAELens's TopK SAE trained on activations that bench_sae cached: the peer side of the SAE side by
side. It runs in a separate venv ($SAELENS_PYTHON) and imports only sae_lens, torch and safetensors,
never this project's gpt/ package; bench.bench_sae starts it and evaluates what it writes.

    $SAELENS_PYTHON bench/saelens_peer.py --acts acts.safetensors --probe probe.safetensors --out DIR \
        [--width 512 --k 32 --lr 2e-3 --batch 2048 --steps 600 --seed 0]

Written for sae-lens 6.54.12 (torch 2.13 CPU). It uses SAELens's own training classes:
`sae_lens.saes.topk_sae.TopKTrainingSAE` / `TopKTrainingSAEConfig` and
`sae_lens.training.sae_trainer.SAETrainer` / `sae_lens.config.SAETrainerConfig`, fed by a plain
iterator over the cached batches (its `DataProvider`), in the cache's order.

Set as ours (trainers.train_sae.SAETrainConfig defaults): d_in from the cache, d_sae 512, k 32, 600
steps of 2048 tokens, Adam lr 2e-3 with betas (0.9, 0.999); the lr schedule is the same function of
the step: a 20-step linear warmup (SAELens's LinearLR from 1/20 to 1 over steps 0..19 equals our
(step+1)/20) and a linear decay to 0 over the last 20% of steps (lr_decay_steps = 120; lr_end = lr,
so the decay starts from lr, as ours); the AuxK loss's "dead" window is dead_feature_window = 97
steps, which marks a latent dead after 98 silent steps = 200,704 tokens, as our dead_tokens =
200,000 does at 2048 tokens a step; apply_b_dec_to_input (b_dec subtracted before encoding, as ours);
normalize_activations "none" (we normalise nothing); float32, no autocast.

Left at SAELens's defaults, so this is SAELens as a user would run it (and they differ from ours):
- rescale_acts_by_decoder_norm = True: TopK picks on pre × ‖W_dec row‖ and decodes with rows divided
  by their norm, a reparametrisation of unit-norm rows; ours keeps the rows unit-norm by projecting
  each row's gradient and renormalising after each step. The saved weights are SAELens's own
  inference form (`process_state_dict_for_saving_inference` folds the norms into W_enc and b_enc),
  which has unit rows and so is exactly our SAE's maths: pre = (x - b_dec) @ W_enc + b_enc, TopK,
  ReLU, z @ W_dec + b_dec.
- decoder_init_norm = 0.1 (rows of norm 0.1, W_enc = W_dec^T) and b_dec = 0 at start; ours starts
  with unit rows and b_dec = the first batch's mean.
- the loss: MSE summed over d_in (not divided by the batch's variance as ours), plus AuxK with
  coefficient 1 on the un-normalised residual, scaled by min(dead / k_aux, 1); ours is normalised
  MSE + AuxK / 32 on the normalised residual. Adam is nearly invariant to the loss's overall scale.
- gradient-norm clipping at 1.0 (hard-coded in SAETrainer._train_step); ours does not clip.
- k_aux = d_in // 2 (the paper's), as ours.
Nothing goes to the network (wandb off, Hugging Face offline) and no pickle is loaded or saved
(no trainer checkpoints are written).

Output in --out: peer.safetensors (W_enc (d_in, n), b_enc (n), W_dec (n, d_in), b_dec (d_in),
float32, SAELens's inference names and shapes), recon.safetensors ("recon": SAELens's own
reconstruction of the probe's "x", by the trained SAE's forward before folding, for the parity
check), peer.json (versions, the settings above, wall and CPU seconds of fit(), tokens, tokens/s,
the trainer's dead count and mean L0 over its last sparsity window).
"""
from __future__ import annotations

import os

for _k, _v in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("WANDB_MODE", "disabled"),
               ("WANDB_SILENT", "true"), ("TQDM_DISABLE", "1")):
    os.environ.setdefault(_k, _v)  # before sae_lens imports transformers, wandb and tqdm

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Iterator  # noqa: E402

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import sae_lens  # noqa: E402
from sae_lens.config import LoggingConfig, SAETrainerConfig  # noqa: E402
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig  # noqa: E402
from sae_lens.training.sae_trainer import SAETrainer  # noqa: E402

WARMUP_STEPS = 20  # trainers.train_sae._lr's warmup
DECAY_FRACTION = 0.2  # ... and its linear decay over the last 20% of steps
DEAD_WINDOW = 97  # steps: dead after 98 silent steps of 2048 tokens = our 200,000 dead_tokens


def batches(acts: Path, batch: int, steps: int) -> Iterator[torch.Tensor]:
    """The cache's "acts" (N, d_in) in order, `batch` rows at a time, read lazily from the file."""
    with safe_open(str(acts), framework="pt") as f:
        sl = f.get_slice("acts")
        n = sl.get_shape()[0]
        if n < batch * steps:
            raise SystemExit(f"{acts} holds {n} activations, fewer than {steps} steps x {batch}; cache it again")
        for s in range(steps):
            yield sl[s * batch:(s + 1) * batch].float()  # (batch, d_in)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--acts", type=Path, required=True, help="safetensors with 'acts' (N, d_in), in training order")
    p.add_argument("--probe", type=Path, required=True, help="safetensors with 'x' (M, d_in) for the parity check")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    with safe_open(str(a.acts), framework="pt") as f:
        d_in = f.get_slice("acts").get_shape()[1]
    torch.manual_seed(a.seed)
    cfg = TopKTrainingSAEConfig(d_in=d_in, d_sae=a.width, k=a.k, dtype="float32", device="cpu",
                                apply_b_dec_to_input=True, normalize_activations="none")
    sae = TopKTrainingSAE(cfg)
    tcfg = SAETrainerConfig(total_training_samples=a.steps * a.batch, train_batch_size_samples=a.batch, lr=a.lr,
                            lr_end=a.lr, lr_scheduler_name="constant", lr_warm_up_steps=WARMUP_STEPS,
                            lr_decay_steps=int(DECAY_FRACTION * a.steps), adam_beta1=0.9, adam_beta2=0.999,
                            device="cpu", autocast=False, dead_feature_window=DEAD_WINDOW,
                            feature_sampling_window=a.steps + 1, n_checkpoints=0, save_final_checkpoint=False,
                            logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(cfg=tcfg, sae=sae, data_provider=batches(a.acts, a.batch, a.steps))
    cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    trainer.fit()
    wall = time.monotonic() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    sae.eval()
    x = load_file(str(a.probe))["x"].float()  # (M, d_in)
    with torch.no_grad():
        recon = sae(x)  # (M, d_in): SAELens's own forward (norm-rescaled TopK), before folding
        sd = {k: v.detach().clone() for k, v in sae.state_dict().items()}
        sae.process_state_dict_for_saving_inference(sd)  # folds the decoder norms: unit rows
    a.out.mkdir(parents=True, exist_ok=True)
    save_file({k: sd[k].float().contiguous() for k in ("W_enc", "b_enc", "W_dec", "b_dec")},
              str(a.out / "peer.safetensors"))
    save_file({"recon": recon.float().contiguous()}, str(a.out / "recon.safetensors"))
    tokens = trainer.n_training_samples
    info = {"sae_lens": sae_lens.__version__, "torch": torch.__version__, "python": sys.version.split()[0],
            "classes": "TopKTrainingSAE, SAETrainer", "d_in": d_in, "d_sae": a.width, "k": a.k, "lr": a.lr,
            "batch": a.batch, "steps": trainer.n_training_steps, "tokens": tokens, "seed": a.seed,
            "threads": torch.get_num_threads(), "rescale_acts_by_decoder_norm": cfg.rescale_acts_by_decoder_norm,
            "decoder_init_norm": cfg.decoder_init_norm, "aux_loss_coefficient": cfg.aux_loss_coefficient,
            "lr_warm_up_steps": WARMUP_STEPS, "lr_decay_steps": tcfg.lr_decay_steps,
            "dead_feature_window": DEAD_WINDOW, "wall_s": wall, "cpu_s": cpu1.ru_utime - cpu0.ru_utime,
            "tokens_per_s": tokens / max(wall, 1e-9), "train_dead": int(trainer.dead_neurons.sum()),
            "train_l0": float(trainer.feature_sparsity.sum())}
    (a.out / "peer.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
