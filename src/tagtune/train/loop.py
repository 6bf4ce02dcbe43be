"""The training recipe: ``train(data_dir, out_dir, config, resume)`` — setup, an explicit loop, validate/save.

Multi-process runs go through accelerate (one process per GPU, or gloo on CPU):

    accelerate launch --multi_gpu --num_processes 2 --main_process_port 0 -m tagtune.cli train ...

(``--cpu`` would silently start a single process.) Each optimizer step sees the same global batch whatever
the number of processes, so 2 processes x batch b match 1 process x batch 2b.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from tagtune import lora
from tagtune.errors import UserError
from tagtune.folders import RunFolder
from tagtune.tags.neutral import NeutralFit, fit_neutral_row, tokenizer_layout, untagged_indices
from tagtune.tags.rows import TagInit, current_tag_rows, grow_base, read_start_rows, save_start_rows, set_tag_rows
from tagtune.train import base_kl
from tagtune.train import run as rundir
from tagtune.train import state as ts
from tagtune.train.accel import (
    FROM_ACCELERATE,
    base_weights_dtype,
    hold_frozen_weights,
    make_accelerator,
    start_trackers,
)
from tagtune.train.config import TrainConfig, TrainConfigError
from tagtune.train.contrast import TagContrast
from tagtune.train.data import V2, add_event_cuts, clip_lengths, epoch_batches, micro_batch, mix_replay, open_data
from tagtune.train.family import family_of
from tagtune.train.loss import combine, split_means
from tagtune.train.metrics import MetricsLog, forgetting, validate

log = logging.getLogger(__name__)

VAL_BATCH_SIZE = 8
# hook(gpt=, step=, samples_dir=, sentences=, tokenizer_path=, tags_path=, data=): data is the opened DataBundle
ValidateHook = Callable[..., None]


@dataclass
class RunResult:
    """What a finished (or already complete) run reports."""

    run_dir: Path
    steps: int
    train_loss: float | None  # mean over the last logging interval
    best_val_loss: float | None
    best_step: int | None
    base_untagged_loss: float | None
    last_val: dict | None
    forgetting_pct: float | None  # untagged val loss vs base, percent (positive = worse)
    weights_dir: Path  # best-by-validation weights (last when never validated)


def _scheduler(optimizer, config: TrainConfig, total_steps: int):
    """Linear warmup to the group's lr, then cosine decay to ``min_lr_ratio`` of it."""
    s = config.schedule
    warm = min(s.warmup_steps, max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        t = (step - warm) / max(total_steps - warm, 1)
        return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _total_steps(n_train: int, config: TrainConfig, world: int) -> tuple[int, int]:
    """(total optimizer steps, global batch size); errors when the data cannot fill one global batch."""
    global_batch = config.batch.batch_size * config.batch.grad_accum * world
    per_epoch = n_train // global_batch
    if per_epoch == 0:
        raise UserError(f"{n_train} training clips cannot fill one global batch of {global_batch} "
                        "(batch_size x grad_accum x processes); lower batch.batch_size or batch.grad_accum")
    total = config.schedule.max_steps or per_epoch * config.schedule.epochs
    return total, global_batch


def train(data_dir: str | Path, out_dir: str | Path, config: TrainConfig | str | Path | dict | None = None,
          resume: bool = False, *, on_validate: ValidateHook | None = None, **overrides) -> RunResult:
    """Fine-tune the base model named by DATA_DIR's manifest on its tags; write everything to ``out_dir``.

    ``config``: a ``TrainConfig``, the path of a YAML recipe, a mapping of recipe sections, or None for the
    shipped ``configs/lora.yaml``; ``overrides``: ``max_steps``, ``epochs``, ``batch_size``, ``lr``, ``rank``,
    ``seed``, ``neutral_steps`` ... (``config.CLI_OVERRIDES``).

    ``resume`` continues from the last complete checkpoint exactly (same data order, RNG, optimizer).
    ``on_validate`` is called on the main process after each validation (e.g. to synthesise
    ``eval.sample_sentences`` into RUN_DIR/samples/), with the data as opened here (``data=``).
    """
    config = TrainConfig.of(config, **overrides)
    run_dir = Path(out_dir)
    # ---- setup: data, model (grown base + adapters), optimizer, schedule, resume state. Everything that can
    # be checked is checked before the first write: a refused run leaves RUN_DIR as it was.
    data = open_data(data_dir)
    family = family_of(data)  # batches, losses and the conditioning cache of the base model's family
    if config.replay.data:
        data.train = mix_replay(data, config.replay.data, config.replay.fraction, config.seed, config.replay.events,
                                config.replay.event_pairs, config.replay.events_at_end)
        log.info("replay: %d untagged clips of %s mixed into %d training clips (%d with a spliced event)",
                 len(data.train.picks), config.replay.data, len(data.train.primary), len(data.train.splices))
        if config.replay.events and not data.train.splices:
            log.warning("replay.events: no tagged clip of %s has event boundaries to splice; none spliced "
                        "(`tagtune events` finds them, `prepare --events` adds them)", data_dir)
    if config.augment.event_cuts:
        data.train = add_event_cuts(data, config.augment.event_cuts, config.seed)
        log.info("event cuts: %d tagged clips also trained on without their events", len(data.train.picks))
        if not data.train.picks:
            log.warning("augment.event_cuts: no tagged clip of %s has event boundaries to cut; none added "
                        "(`tagtune events` finds them, `prepare --events` adds them)", data_dir)
    accel = make_accelerator(config, run_dir)
    held_dtype = base_weights_dtype(config, FROM_ACCELERATE[accel.mixed_precision])
    rank, world, main = accel.process_index, accel.num_processes, accel.is_main_process
    torch.manual_seed(config.seed + rank)
    checkpoint = rundir.check_resume(run_dir, config, data, rank, world) if resume else None
    rows_file = run_dir / rundir.START_ROWS
    # a resumed run starts from the rows it recorded (a checkpoint then overrides them); "neutral" is fitted below
    init = TagInit(config.lora.tag_init, config.seed, data.tokenizer_path,
                   rows_file if resume and rows_file.is_file() else None)
    gpt, model_cfg, new_ids = grow_base(data.base_dir, data.tag_names, init, dropout=config.model.dropout)
    _check_tag_ids(data, new_ids)
    base_dists = _base_distributions(gpt, data, config, family, accel.device)  # of the base: before the adapters
    gpt.gpt.gradient_checkpointing = config.model.gradient_checkpointing
    _apply_lora(gpt, config, new_ids)
    gpt.to(accel.device).train()
    optim = config.optim
    optimizer = torch.optim.AdamW(lora.param_groups(gpt, optim.lr, optim.weight_decay, optim.tag_lr_scale),
                                  betas=tuple(optim.betas), eps=optim.eps)
    total_steps, global_batch = _total_steps(len(data.train), config, world)
    scheduler = _scheduler(optimizer, config, total_steps)
    progress = ts.Progress()
    if checkpoint is not None:
        progress = rundir.restore(gpt, optimizer, scheduler, checkpoint, accel.device)
    if main and resume:
        rundir.tidy(run_dir, checkpoint.folder if checkpoint is not None else None)
    elif main:
        rundir.start(run_dir, config, data, model_cfg, new_ids, world)
    need_start_rows = progress.step == 0 and not rows_file.is_file()  # decided by every process before any writes
    accel.wait_for_everyone()
    start_trackers(accel, config, run_dir)
    meta = rundir.weights_meta(data, model_cfg, new_ids, config)
    # metric lines after the restored step are replayed; a run without a checkpoint starts its metrics afresh
    metrics = MetricsLog(run_dir, main, progress.step if checkpoint is not None else None, tracker=accel)
    conds = _prefix_cache(family, gpt, data.train, accel.device, config)
    val_conds = _prefix_cache(family, gpt, data.val, accel.device, config)
    if need_start_rows:
        _start_tag_rows(gpt, data, new_ids, config, family, conds, accel, rows_file)
    val_batches = [family.collate(data.val, list(range(i, min(i + VAL_BATCH_SIZE, len(data.val)))), gpt, val_conds)
                   for i in range(0, len(data.val), VAL_BATCH_SIZE)]
    run_validation = functools.partial(validate, gpt, val_batches, config.loss, data.tag_names, accel.device,
                                       accel.autocast, family.losses(gpt, config.loss))
    if main and progress.base_untagged_loss is None and val_batches:
        base = run_validation()  # adapters start as the identity: this is the base model's loss
        progress.base_untagged_loss = base["loss_untagged"]
        metrics.add("val", 0, base)
        metrics.flush()

    # after the neutral fit and the base's validation, so both are those of the fp32 base
    if saved := hold_frozen_weights(gpt, held_dtype):
        log.info("frozen base blocks held in bf16 (runtime.base_weights): %.0f MB less", saved / 2**20)
    losses = family.losses(gpt, config.loss, config.replay.base_kl) if base_dists else family.losses(gpt, config.loss)
    model, optimizer = accel.prepare(losses, optimizer)
    trainable = [p for p in gpt.parameters() if p.requires_grad]
    lengths = clip_lengths(data.train)
    contrast = _tag_contrast(data, new_ids, config, gpt.cfg.stop_text_token)
    # the bar (with ETA) is the main process's, on stderr, and off when stderr is not a terminal
    bar = tqdm(total=total_steps, initial=progress.step, disable=None if main and config.runtime.progress_bar else True,
               desc="train", unit="step", dynamic_ncols=True)
    window = _Window()
    last_val = None

    # ---- the loop: one optimizer step per global batch
    while progress.step < total_steps:
        batches = epoch_batches(lengths, global_batch, config.seed, progress.epoch)
        while progress.batch_in_epoch < len(batches) and progress.step < total_steps:
            clips = batches[progress.batch_in_epoch]
            for k in range(config.batch.grad_accum):
                rows = micro_batch(clips, k, rank, world, config.batch.batch_size)
                batch = family.collate(data.train, rows, gpt, conds, contrast, progress.epoch).to(accel.device)
                if base_dists:
                    batch = base_kl.attach(batch, base_dists, rows)
                sync = contextlib.nullcontext() if k == config.batch.grad_accum - 1 else accel.no_sync(model)
                with sync:
                    text_ce, mel_ce = model(batch)
                    per_clip = combine(text_ce, mel_ce, config.loss)  # (b,)
                    # sum over clips / global batch, x world because DDP averages gradients over processes
                    accel.backward(per_clip.sum() * world / len(clips))
                window.add(per_clip, text_ce, mel_ce, batch)
            grad_norm = accel.clip_grad_norm_(trainable, config.optim.grad_clip) if config.optim.grad_clip else None
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            progress.step += 1
            progress.batch_in_epoch += 1
            bar.update(1)

            step, done = progress.step, progress.step == total_steps
            if step % config.runtime.log_every_steps == 0 or done:
                values = window.reduce(accel) | {"lr": scheduler.get_last_lr()[0], "epoch": progress.epoch,
                                                  "grad_norm": None if grad_norm is None else float(grad_norm)}
                metrics.add("train", step, values)
                bar.set_postfix(loss=f"{values['loss']:.3f}")
            validate_now = step % config.eval.every_steps == 0 or done
            if validate_now and main and val_batches:
                last_val = run_validation()
                last_val["forgetting_pct"] = forgetting(last_val["loss_untagged"], progress.base_untagged_loss)
                _warn_forgetting(last_val["forgetting_pct"], config.eval.forgetting_tolerance_pct, step)
                metrics.add("val", step, last_val)
                if progress.best_val_loss is None or last_val["loss"] < progress.best_val_loss:
                    progress.best_val_loss, progress.best_step = last_val["loss"], step
                    rundir.save_weights(gpt, run_dir / rundir.BEST, meta | {"step": step}, data, config)
                if on_validate is not None:
                    on_validate(gpt=gpt, step=step, samples_dir=RunFolder(run_dir).samples,
                                sentences=config.eval.sample_sentences,
                                tokenizer_path=data.tokenizer_path, tags_path=data.tags_path, data=data)
                metrics.flush()
            if validate_now or step % config.eval.save_every_steps == 0 or done:
                rundir.save_checkpoint(accel, run_dir, gpt, optimizer, scheduler, progress, meta, data, config)
        if progress.step < total_steps:
            progress.epoch += 1
            progress.batch_in_epoch = 0

    # ---- finish: last weights, metric files, summary
    bar.close()
    if main:
        rundir.save_weights(gpt, run_dir / rundir.LAST, meta | {"step": progress.step}, data, config)
        if not (run_dir / rundir.BEST).exists():
            shutil.copytree(run_dir / rundir.LAST, run_dir / rundir.BEST)
    metrics.close()
    for tracker in accel.trackers:  # flushes TensorBoard's event file, ends a wandb run (the process group stays)
        tracker.finish()
    accel.wait_for_everyone()
    last_train = next((r for r in reversed(metrics.records) if r["kind"] == "train"), {})
    return RunResult(run_dir, progress.step, last_train.get("loss"), progress.best_val_loss, progress.best_step,
                     progress.base_untagged_loss, last_val, (last_val or {}).get("forgetting_pct"),
                     run_dir / rundir.BEST)


def _base_distributions(gpt, data, config: TrainConfig, family, device) -> dict:
    """The base's code distributions of the replay clips as recorded, when ``replay.base_kl`` asks for them."""
    if not config.replay.base_kl:
        return {}
    if family.name == V2:
        raise TrainConfigError("replay.base_kl: IndexTTS 1.x only; set it to 0 for an IndexTTS-2 base")
    rows = base_kl.recorded_replay_rows(data.train)
    if not rows:
        log.warning("replay.base_kl: no replay clip is trained on as recorded (replay.data unset, or every one "
                    "spliced); nothing added")
        return {}
    started = time.perf_counter()
    out = base_kl.base_log_probs(gpt.to(device), data.train, rows, device)
    log.info("replay.base_kl: the base's distributions of %d replay clips (%.1f s)", len(out),
             time.perf_counter() - started)
    return out


def _prefix_cache(family, gpt, dataset, device, config: TrainConfig) -> dict | None:
    """What each clip's conditioning prefix can start from, computed once (``family.prefix_cache``). None when
    the conditioning trains with padding left in attention (``loss.mask_padding`` false): the cached frames hold
    no padding frames, so that layout recomputes its prefix from the mels on every batch."""
    trained = config.lora.train_conditioning
    if trained and not config.loss.mask_padding:
        return None
    return family.prefix_cache(gpt, dataset, device, trained)


def _start_tag_rows(gpt, data, new_ids: list[int], config: TrainConfig, family, conds, accel,
                    rows_file: Path) -> None:
    """Fit the "neutral" tag row when the recipe asks for it, and record the rows training starts from.

    The main process fits and writes ``rows_file``; the others read it, so every process starts alike.
    """
    if accel.is_main_process:
        report = None
        if config.lora.tag_init == "neutral" and config.lora.neutral_steps > 0:
            fit = NeutralFit(steps=config.lora.neutral_steps, lr=config.lora.neutral_lr, seed=config.seed)
            picks = untagged_indices(data.train, fit.max_clips, fit.seed)
            clips = [data.train[i] for i in picks]
            latents = family.neutral_prefix(gpt, data.train, picks, conds, accel.device)
            starts, space_id = tokenizer_layout(data.tokenizer_path, data.tagset.spaced)
            row, report = fit_neutral_row(gpt, new_ids, clips, latents, starts, space_id, fit,
                                          progress=config.runtime.progress_bar)
            set_tag_rows(gpt, new_ids, {"text_embedding.weight": row.expand(len(new_ids), -1)})
        save_start_rows(rows_file, current_tag_rows(gpt, new_ids), data.tag_names, config.lora.tag_init, report)
    accel.wait_for_everyone()
    if not accel.is_main_process:
        set_tag_rows(gpt, new_ids, read_start_rows(rows_file, len(new_ids)))


def _apply_lora(gpt, config: TrainConfig, new_ids: list[int]) -> None:
    """``lora.apply_lora`` with the recipe's settings; settings that do not fit the model name their recipe key."""
    try:
        lora.apply_lora(gpt, config.lora.spec(), new_ids)
    except lora.LoraError as e:
        raise TrainConfigError(f"lora.{e.setting} {e.detail}") from None


def _tag_contrast(data, new_ids: list[int], config: TrainConfig, stop_text: int) -> TagContrast | None:
    """What chooses the contrast texts of ``loss.tag_contrast`` (None when off)."""
    if not config.loss.tag_contrast:
        return None
    evented = sum(1 for e in data.train.examples if e["has_tag"] and e.get("events"))
    if evented:
        log.info("tag contrast: %d tagged clips with event boundaries each get a contrast text per epoch", evented)
    else:
        log.warning("loss.tag_contrast: no tagged clip of %s has event boundaries to score; the term adds nothing "
                    "(`tagtune events` finds them, `prepare --events` adds them)", data.data_dir)
    _, space_id = tokenizer_layout(data.tokenizer_path, data.tagset.spaced)
    return TagContrast(data.tagset, dict(zip(data.tag_names, new_ids)), space_id, stop_text, config.seed)


def _check_tag_ids(data, new_ids: list[int]) -> None:
    """The tokenizer's tag ids must be the rows grown for them (an off-by-one scrambles every tag)."""
    ids = data.tagset.token_ids
    want = dict(zip(data.tag_names, new_ids))
    if ids and ids != want:
        raise UserError(f"{data.tags_path}: tag ids {ids} do not match the grown text rows {want} of the base "
                        f"checkpoint {data.base_dir} (was the tokenizer extended from another base model?)")


def _warn_forgetting(pct: float | None, tolerance: float, step: int) -> None:
    if pct is not None and pct > tolerance:
        log.warning("step %d: untagged validation loss is %.1f%% worse than the base model's (tolerance %.1f%%): "
                    "the model may be forgetting; lower the lr or add untagged clips", step, pct, tolerance)


class _Window:
    """Loss sums since the last log line, reduced over processes when logged."""

    KEYS = ("loss", "loss_text", "loss_mel", "loss_tagged", "loss_untagged")

    def __init__(self):
        self._reset()

    def _reset(self):
        self.sums = torch.zeros(len(self.KEYS) * 2 + 1, dtype=torch.float64)
        self.t0 = time.perf_counter()

    def add(self, per_clip, text_ce, mel_ce, batch) -> None:
        parts = split_means(per_clip, batch.has_tag)
        pairs = [parts["all"], split_means(text_ce, batch.has_tag)["all"], split_means(mel_ce, batch.has_tag)["all"],
                 parts["tagged"], parts["untagged"]]
        for i, (s, n) in enumerate(pairs):
            self.sums[2 * i] += s
            self.sums[2 * i + 1] += n
        self.sums[-1] += batch.real_positions

    def reduce(self, accel) -> dict:
        sums = accel.reduce(self.sums.to(accel.device), reduction="sum").cpu() if accel.num_processes > 1 else self.sums
        seconds = time.perf_counter() - self.t0
        out = {k: (float(sums[2 * i] / sums[2 * i + 1]) if sums[2 * i + 1] > 0 else None)
               for i, k in enumerate(self.KEYS)}
        out["positions_per_s"] = float(sums[-1]) / max(seconds, 1e-9)
        self._reset()
        return out
