"""Speed of fundus_ssl: pretraining steps through the fastai callbacks against a plain PyTorch loop, the fast
path switch by switch, the data pipeline, sliding-window segmentation and (gpu) MoCo v2 end to end.

    python bench/run.py cpu          # tiny encoder, 64 px, 1 torch thread: under 3 minutes
                                     # (1 thread: on a 2-core machine shared with other jobs, 2 OpenMP threads spin and run 10x slower)
    python bench/run.py gpu          # ResNet-50, 224 px, batch 256, bf16, every fast-path switch (CUDA)
    python bench/run.py gpu --smoke  # every section of a config shrunk to seconds (`SMOKE`: tiny encoder, 64 px, batch 16,
                                     # 1-2 steps), on CUDA if there is one, else the CPU; the config's bf16 and channels-last kept

Each prints tables and writes <out>/<config>.json (`--smoke`: <config>-smoke.json, never the real figures). What is measured:

1. **Pretraining step** (MoCo v2, BYOL, SimCLR, Barlow Twins, VICReg, SWCL): images/s and peak memory of one optimizer step (two views
   made on the device, target network, loss, backward, fused AdamW, momentum update, MoCo's enqueue), the
   same batch every step, so the loader is not in it. `callback` runs `Learner.fit` with the method's
   callback (`MoCoV2`, `BYOL`, `SimCLR`, `BarlowTwins`, `VICReg`, `fundus_ssl.swcl.SWCL`) and `fast_path`; `plain` (`bench/plain_loops.py`) is a
   minimal PyTorch loop doing the same computation on a copy of the same model with the same optimizer and
   batch. SWCL's batch is what its loader yields: uint8 patches and a dict of patch labels (patient, position,
   abnormality), two patches per patient at one position, so that every patch has a positive. Each path's
   first step starts from the same weights and seed and must give the same loss, else the bench stops.
   After warm-up the paths alternate, `repeats` rounds of `steps` steps (which path goes first swaps every
   round), and `step_ratio_callback_vs_plain` = median callback step time / median plain step time, with
   a bootstrap 90% interval over rounds (rounds resampled in pairs). On a CPU with 1 torch thread the
   step's CPU time (`time.thread_time`) is measured too, and its ratio `step_ratio_cpu_time`: it leaves
   out the time other processes hold the core (not their effect on the caches and memory bandwidth).
2. **Fast path, switch by switch** (MoCo, callback path): fastai's defaults (its own Adam, recorder, fp32),
   then each switch of `fundus_ssl.pretrain.fast_path` alone, then all of the config's switches.
3. **Data pipeline**: decode + two views + collate, images/s, for fundus JPEGs written by
   `fundus_ssl.synthetic` and passed through the pre-resized cache (`fundus_ssl.cache.build_cache`), with
   0..N torch loader workers (persistent, pinned on CUDA): the CPU path (`TwoViewItemAug`, albumentations in
   the workers) against the device path (workers only decode, `TwoViewAug` makes the views on the device), and
   the workers' share of the device path alone (`decode only`: decode, center crop, collate), which bounds the
   loader's rate on a machine with more cores: about (cores) x (its 1-worker rate). Last, the end-to-end
   section's own loader alone, `unlabeled_dls` (fastai's item pipeline around the same decode), with its workers
   started at every epoch as fastai does and kept (`persistent_workers=True`, `fundus_ssl.data.PersistentDL`), and
   the time from an epoch's start to its first batch (`epoch_start_ms`).
4. **Sliding-window segmentation**: `predict_segmentation` of a U-Net on a 565 x 584 image at native
   resolution (DRIVE's size), images/s; bf16 on CUDA only (a CPU emulates bfloat16 convolutions, ~60x slower).
5. (gpu) **End to end**: MoCo v2 from the pre-resized cache through `unlabeled_dls` with `e2e_workers` loader
   workers, against the arithmetic bound (33 GFLOP per image and step at 224 px for ResNet-50: query forward
   and backward, key forward), and the GPU's busy share (kernel time / wall time, from the torch profiler).
   On a CPU (`--smoke` without CUDA) it runs the same code; busy share and bound are None there.
"""
from __future__ import annotations
import argparse, copy, json, math, os, platform, resource, statistics, sys, tempfile, time, warnings
from pathlib import Path

CONFIGS = dict(
    cpu=dict(device='cpu', threads=1, encoder='test_resnet', size=64, bs=32, bf16=False, channels_last=False, compile=False,
             steps=1, warmup=1, repeats=31, switch_repeats=3, queue=256, data_n=64, data_size=224, view_size=96, data_bs=16, workers=[0, 1, 2],
             seg_encoder='test_resnet', seg_window=256, seg_images=1, end_to_end=False, projector=512),
    gpu=dict(device='cuda', threads=16, encoder='resnet50', size=224, bs=256, bf16=True, channels_last=True, compile=True,
             steps=10, warmup=5, repeats=9, switch_repeats=3, queue=65536, data_n=2048, data_size=224, view_size=224, data_bs=256,
             workers=[0, 4, 8, 16], seg_encoder='resnet50', seg_window=384, seg_images=8, end_to_end=True, e2e_workers=16, projector=8192),
)
SMOKE = dict(threads=1, encoder='test_resnet', seg_encoder='test_resnet', size=64, bs=16, queue=64, steps=1, warmup=1, repeats=2,
             switch_repeats=1, data_n=16, data_size=96, view_size=64, data_bs=8, workers=[0, 1], e2e_workers=1, seg_window=128,
             seg_images=1, compile=False, projector=64)   # a config's code paths in seconds; its bf16 and channels_last are kept
GFLOP_PER_IMAGE = 33.0     # ResNet-50 at 224 px: forward 4.1 GMAC = 8.2 GFLOP; query forward + backward 3 x 8.2, key forward 8.2
PEAK_BF16_TFLOPS = {'H100': 989., 'H200': 989., 'A100': 312., 'L40S': 362.}   # dense tensor-core peaks
LOSS_RTOL = dict(fp32=1e-4, bf16=1e-2)   # first-step losses of the two paths: same computation, same weights, same views


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', choices=list(CONFIGS))
    p.add_argument('--out', default=str(Path(__file__).parent/'results'), help='folder of <config>.json')
    p.add_argument('--threads', type=int, help='torch threads (default: the config\'s)')
    p.add_argument('--skip', nargs='*', default=[], choices=['step', 'switches', 'data', 'seg', 'e2e'], help='sections left out')
    p.add_argument('--smoke', action='store_true', help='every section shrunk to seconds, on CUDA if available, else the CPU; '
                                                        'writes <config>-smoke.json')
    return p.parse_args()


def config(name:str, smoke:bool, cuda:bool) -> dict:
    "The settings of config `name`; with `smoke`, shrunk by `SMOKE` and on the device there is."
    cfg = dict(CONFIGS[name])
    return dict(cfg, **SMOKE, device='cuda' if cuda else 'cpu') if smoke else cfg


# ---------------------------------------------------------------- timing helpers
def sync(device):
    import torch
    if device.type == 'cuda': torch.cuda.synchronize(device)

def clocks(device) -> tuple[float, float]:
    "Wall time and this thread's CPU time, once the device's queued work is done."
    sync(device)
    return time.perf_counter(), time.thread_time()

def per_step(t0:tuple, t1:tuple, steps:int) -> tuple[float, float]:
    "(wall, CPU) seconds per step between two `clocks` readings."
    return (t1[0] - t0[0]) / steps, (t1[1] - t0[1]) / steps

def reset_peak(device):
    import torch
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(device)

def peak_mb(device) -> float:
    "Peak memory: CUDA memory allocated since the last reset; on a CPU the process's peak RSS so far."
    import torch
    if device.type == 'cuda': return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def ratio_interval(num:list, den:list, n:int=2000, seed:int=0) -> tuple[float, list]:
    "median(num) / median(den), and its bootstrap 90% interval: rounds resampled in pairs (a slow spell hits both paths of a round)."
    import numpy as np
    a, b = np.asarray(num), np.asarray(den)
    idx = np.random.default_rng(seed).integers(0, len(a), (n, len(a)))
    boot = np.median(a[idx], 1) / np.median(b[idx], 1)
    return float(np.median(a) / np.median(b)), [float(q) for q in np.percentile(boot, [5, 95])]


# ---------------------------------------------------------------- pretraining steps
class SameBatch:
    "A loader yielding the same device batch `n` times: the step alone is timed, not the data pipeline."
    after_batch = None
    def __init__(self, b:tuple, n:int):
        self.b, self.n, self.bs, self.device = b, n, len(b[0]), b[0].device
        self.dataset = range(1 << 20)   # MoCo's queue check counts training images
    def __len__(self): return self.n
    def __iter__(self): return (self.b for _ in range(self.n))


def swcl_labels(bs:int, device) -> dict:
    "Patch labels as SWCL's loader gives them: bs/2 patients with 2 patches each at one position, every 5th patient's pair abnormal."
    import torch
    from fundus_ssl.patches import PATCH_POSITIONS
    pair = torch.arange(bs, device=device) // 2
    return dict(patient=pair, position=pair % len(PATCH_POSITIONS), abnormality=(pair % 5 == 0).long())


def methods(cfg) -> dict:
    "name -> (model factory, callback factory, plain step, whether the batch carries SWCL's patch labels)."
    from fundus_ssl.moco import moco_model, MoCoV2
    from fundus_ssl.byol import byol_model, BYOL
    from fundus_ssl.swcl import swcl_model, SWCL
    from fundus_ssl.simclr import embedding_model, SimCLR
    from fundus_ssl.barlow_twins import BarlowTwins
    from fundus_ssl.vicreg import VICReg
    from fundus_ssl.losses import nt_xent, barlow_twins_loss, vicreg_loss
    from fundus_ssl.dino import dino_model, DINO
    from plain_loops import moco_plain, byol_plain, swcl_plain, dino_plain
    enc, wide = cfg['encoder'], dict(dim=cfg['projector'], hidden=cfg['projector'], n_layers=3)   # Barlow Twins' and VICReg's projector (papers: 8192)
    return dict(
        moco=(lambda: moco_model(enc, queue_size=cfg['queue'], dim=128, bn_splits=bn_splits(cfg['bs'])), MoCoV2, moco_plain, False),
        byol=(lambda: byol_model(enc), BYOL, byol_plain, False),
        simclr=(lambda: embedding_model(enc), SimCLR, view_pair_plain(lambda cb, a, b: nt_xent(a, b, cb.temperature)), False),
        barlow_twins=(lambda: embedding_model(enc, **wide), BarlowTwins,
                      view_pair_plain(lambda cb, a, b: barlow_twins_loss(a, b, cb.lambd, cb.loss_scale)), False),
        vicreg=(lambda: embedding_model(enc, **wide), VICReg,
                view_pair_plain(lambda cb, a, b: vicreg_loss(a, b, cb.sim_coeff, cb.std_coeff, cb.cov_coeff).loss), False),
        dino=(lambda: dino_model(enc, out_dim=max(64, 8 * cfg['projector'])),   # K: 65536 at the gpu config's 8192 (the paper's)
              lambda: DINO(n_local=8 if cfg['projector'] >= 8192 else 2), dino_plain, False),   # local crops: the paper's 8 on the GPU
        swcl=(lambda: swcl_model(enc), SWCL, swcl_plain, True))


def view_pair_plain(loss):
    """The plain step of a method whose loss is a function of the two views' embeddings (SimCLR, Barlow Twins, VICReg):
    both views through the one network, `loss(cb, z1, z2)`. (Kept here, not in plain_loops.py, until that file gains them.)"""
    def step(model, cb, aug, opt, ac, x):
        v = aug(x)
        with ac():
            z1, z2 = model(v.view1, v.view2)['z'].float().chunk(2)
            l = loss(cb, z1, z2)
        l.backward(); opt.step(); opt.zero_grad()
        return l.detach()
    return step


def bn_splits(bs:int) -> int: return 8 if bs >= 64 else 2   # MoCo's BatchNorm groups per view


def step_batch(cfg, device, labels:bool) -> tuple:
    "The device batch of every step: uint8 images (stand-ins for SWCL's patches) and, for SWCL, the patch labels."
    from fundus_ssl.augment import fundus_like_batch
    x = fundus_like_batch(cfg['bs'], cfg['size'], seed=0).to(device)
    return (x, swcl_labels(cfg['bs'], device)) if labels else (x,)


def callback_learner(model, cb, b, cfg, switches:dict|None):
    "A Learner over `SameBatch`, with `fast_path(**switches)` (None: fastai's defaults)."
    from fastai.data.core import DataLoaders
    from fastai.callback.core import Callback, CancelValidException
    from fundus_ssl.pretrain import ssl_learner, fast_path

    class NoValidation(Callback):
        def before_validate(self): raise CancelValidException()

    dls = DataLoaders(SameBatch(b, 1), SameBatch(b, 1))
    learn = ssl_learner(dls, model, cb, cbs=NoValidation())
    if switches is not None: fast_path(learn, **switches)
    return learn


def time_callback(learn, b, steps:int, device, cbs=()) -> tuple[float, float]:
    "(wall, CPU) seconds per step of `learn.fit(1)` over `steps` identical batches (fit's start and end not counted)."
    from fastai.callback.core import Callback
    clock = {}
    class Clock(Callback):
        order = 100
        def before_train(self): clock['t0'] = clocks(device)
        def after_train(self): clock['t1'] = clocks(device)
    learn.dls.loaders[0] = SameBatch(b, steps)
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn.fit(1, 1e-4, cbs=[Clock(), *cbs])
    return per_step(clock['t0'], clock['t1'], steps)


def plain_runner(model, cb, plain_step, cfg, device):
    "The plain loop's step on a batch: the same model (a copy), views, optimizer and precision as the callback path."
    import torch, contextlib
    from fundus_ssl.augment import TwoViewAug
    from fundus_ssl.pretrain import compile_encoders
    aug = None if cb.aug_spec == 'dino' else TwoViewAug(cb.aug_spec, size=cfg['size'])   # DINO's plain step builds its multi-crop views
    if cfg['channels_last']: model = model.to(memory_format=torch.channels_last)
    if cfg['compile']: compile_encoders(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    ac = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if cfg['bf16'] else contextlib.nullcontext
    model.train()
    return lambda b: plain_step(model, cb, aug, opt, ac, *b)


def time_plain(step, b, steps:int, device) -> tuple[float, float]:
    "(wall, CPU) seconds per step of the plain loop."
    t0 = clocks(device)
    for _ in range(steps): step(b)
    return per_step(t0, clocks(device), steps)


def first_losses(learn, plain, b, device) -> tuple[float, float]:
    "The loss of each path's first step, from the same weights and seed (so the same views and shuffles)."
    import torch
    from fastai.callback.core import Callback
    seen = []
    class FirstLoss(Callback):
        def after_loss(self): seen.append(self.learn.loss.detach())
    torch.manual_seed(0); time_callback(learn, b, 1, device, cbs=[FirstLoss()])
    torch.manual_seed(0); loss = plain(b)
    return float(seen[0]), float(loss)


def check_same_loss(name:str, losses:tuple, cfg):
    "Stop when the two paths' first losses differ: the plain loop would not be doing the callback's computation."
    tol = LOSS_RTOL['bf16' if cfg['bf16'] else 'fp32']
    if not math.isclose(*losses, rel_tol=tol):
        raise RuntimeError(f'{name}: first-step loss {losses[0]:.6g} through the callback, {losses[1]:.6g} through the plain loop '
                           f'(rel_tol {tol}): the plain loop does not compute what the callback does')


def alternate(learn, plain, b, cfg, device) -> dict:
    "Per-round (wall, CPU) step times and peak memory of both paths, the first path swapped every round."
    runs = dict(callback=lambda: time_callback(learn, b, cfg['steps'], device), plain=lambda: time_plain(plain, b, cfg['steps'], device))
    times, mem = {k: [] for k in runs}, {}
    for r in range(cfg['repeats']):
        for k in (('callback', 'plain') if r % 2 == 0 else ('plain', 'callback')):
            reset_peak(device); times[k].append(runs[k]()); mem[k] = peak_mb(device)
    return dict(times=times, mem=mem)


def step_row(cfg, times:dict, mem:dict, losses:tuple, cpu_time:bool) -> dict:
    "A method's figures: img/s, step times per round, the wall (and CPU-time) ratios with their 90% intervals."
    wall = {k: [t[0] for t in v] for k, v in times.items()}
    ratio, interval = ratio_interval(wall['callback'], wall['plain'])
    c, p = statistics.median(wall['callback']), statistics.median(wall['plain'])
    row = dict(callback_images_s=cfg['bs'] / c, plain_images_s=cfg['bs'] / p, callback_step_ms=1e3 * c, plain_step_ms=1e3 * p,
               step_ratio_callback_vs_plain=ratio, step_ratio_interval=interval,
               callback_steps_ms=[1e3 * t for t in wall['callback']], plain_steps_ms=[1e3 * t for t in wall['plain']],
               peak_mem_mb_callback=mem['callback'], peak_mem_mb_plain=mem['plain'],
               first_loss_callback=losses[0], first_loss_plain=losses[1])
    if cpu_time:
        cpu = {k: [t[1] for t in v] for k, v in times.items()}
        row['step_ratio_cpu_time'], row['step_ratio_cpu_time_interval'] = ratio_interval(cpu['callback'], cpu['plain'])
        row.update(callback_cpu_ms=[1e3 * t for t in cpu['callback']], plain_cpu_ms=[1e3 * t for t in cpu['plain']])
    return row


def bench_steps(cfg, device, cpu_time:bool) -> dict:
    "Each method through its callback and through the plain loop: same first loss, then alternating rounds."
    import torch
    switches = dict(bf16=cfg['bf16'], channels_last=cfg['channels_last'], compile=cfg['compile'], fused=True, sync_free=True)
    results = {}
    for name, (make_model, make_cb, plain_step, labels) in methods(cfg).items():
        torch.manual_seed(0)
        model = make_model().to(device)
        twin = copy.deepcopy(model)              # before any compilation: a deepcopy of compiled methods would share them
        b = step_batch(cfg, device, labels)
        cb = make_cb()
        learn = callback_learner(model, cb, b, cfg, switches)
        plain = plain_runner(twin, cb, plain_step, cfg, device)
        losses = first_losses(learn, plain, b, device)   # the first warm-up step of each path
        check_same_loss(name, losses, cfg)
        if cfg['warmup'] > 1: time_callback(learn, b, cfg['warmup'] - 1, device); time_plain(plain, b, cfg['warmup'] - 1, device)
        results[name] = r = step_row(cfg, **alternate(learn, plain, b, cfg, device), losses=losses, cpu_time=cpu_time)
        print(f"  {name:12s} callback {r['callback_images_s']:8.1f} img/s  plain {r['plain_images_s']:8.1f} img/s  "
              f"ratio {fmt_ratio(r, 'step_ratio_callback_vs_plain', 'step_ratio_interval')}"
              + (f"  CPU-time ratio {fmt_ratio(r, 'step_ratio_cpu_time', 'step_ratio_cpu_time_interval')}" if cpu_time else ''), flush=True)
        del learn, plain, model, twin
        if device.type == 'cuda': torch.cuda.empty_cache()
    return results


def fmt_ratio(row:dict, key:str, interval:str) -> str:
    "A ratio and its interval as `1.012 [0.980, 1.040]`."
    lo, hi = row[interval]
    return f'{row[key]:.3f} [{lo:.3f}, {hi:.3f}]'


def bench_switches(cfg, device) -> dict:
    "MoCo through the callback: fastai's defaults, each fast-path switch alone, then all of the config's."
    import torch
    make_model, make_cb, _, _ = methods(cfg)['moco']
    none = dict(bf16=False, channels_last=False, compile=False, fused=False, sync_free=False)
    rows = {'fastai defaults': None, 'fast_path, all off': none}
    for k in none:
        if k == 'compile' and not cfg['compile']: print('  compile: skipped in this config (minutes of compilation on a CPU; see tests/test_fast_path.py)'); continue
        if k == 'bf16' and device.type == 'cpu': print('  bf16: skipped on a CPU (bfloat16 convolutions are emulated, slower)'); continue
        rows[f'+ {k}'] = dict(none, **{k: True})
    rows['all of the config'] = dict(bf16=cfg['bf16'], channels_last=cfg['channels_last'], compile=cfg['compile'], fused=True, sync_free=True)
    b = step_batch(cfg, device, False)
    learners = {}
    for name, sw in rows.items():
        torch.manual_seed(0)
        learners[name] = callback_learner(make_model().to(device), make_cb(), b, cfg, sw)
        time_callback(learners[name], b, cfg['warmup'], device)
    times = {n: [] for n in rows}
    for _ in range(cfg['switch_repeats']):
        for n, learn in learners.items(): times[n].append(time_callback(learn, b, cfg['steps'], device)[0])
    out = {}
    for n, t in times.items():
        out[n] = dict(images_s=cfg['bs'] / statistics.median(t), step_ms=1e3 * statistics.median(t), switches=rows[n])
        print(f'  {n:20s} {out[n]["images_s"]:8.1f} img/s', flush=True)
    return out


# ---------------------------------------------------------------- data pipeline
class JpegViews:
    "Dataset: decode a cached JPEG; with `item_aug` also its two views on the CPU (albumentations)."
    def __init__(self, paths, item_aug=None): self.paths, self.item_aug = list(paths), item_aug
    def __len__(self): return len(self.paths)
    def __getitem__(self, i):
        import numpy as np, torch
        from fundus_ssl.io import read_image
        img = read_image(self.paths[i])
        if self.item_aug is not None: return tuple(self.item_aug(img)[:2])
        s = min(img.shape[:2])                          # a square center crop, so that the batch collates
        t, l = (img.shape[0] - s) // 2, (img.shape[1] - s) // 2
        return torch.from_numpy(np.ascontiguousarray(img[t:t + s, l:l + s])).permute(2, 0, 1)


def _worker_init(_):
    import cv2, torch
    cv2.setNumThreads(1); torch.set_num_threads(1)


def cached_jpegs(cfg, tmp:Path) -> tuple[list, dict]:
    "Synthetic EyePACS-like originals, cached at `data_size` px (FOV-cropped JPEGs): their paths and the cache's summary."
    from fundus_ssl.synthetic import write_eyepacs_like
    from fundus_ssl.datasets import read_eyepacs
    from fundus_ssl.cache import build_cache
    df = read_eyepacs(write_eyepacs_like(tmp/'EyePACS', n_patients=cfg['data_n'] // 2, size=max(256, cfg['data_size'] + 32), seed=0))
    t0 = time.perf_counter()
    cached = build_cache(df, tmp/'cache', size=cfg['data_size'], n_workers=min(8, os.cpu_count() or 1), progress=False)
    info = dict(cached.attrs['cache'], seconds=time.perf_counter() - t0)
    info.pop('settings')
    return list(cached.image), info


def bench_data(cfg, device, paths) -> tuple[dict, dict]:
    import torch
    from torch.utils.data import DataLoader
    from fundus_ssl.augment import TwoViewAug, TwoViewItemAug
    dev_aug = TwoViewAug('mocov2', size=cfg['view_size'])
    out = {}
    for path in ('cpu (TwoViewItemAug)', 'device (TwoViewAug)', 'decode only'):   # decode only: the workers' share of the device path
        item_aug = TwoViewItemAug('mocov2', size=cfg['view_size']) if path.startswith('cpu') else None
        for w in cfg['workers']:
            dl = DataLoader(JpegViews(paths, item_aug), batch_size=cfg['data_bs'], shuffle=True, drop_last=True, num_workers=w,
                            persistent_workers=w > 0, pin_memory=device.type == 'cuda', prefetch_factor=4 if w else None,
                            worker_init_fn=_worker_init)
            def one_pass():
                n = 0
                for b in dl:
                    if path == 'decode only': n += len(b)
                    elif item_aug is None: v = dev_aug(b.to(device, non_blocking=True)); n += len(v.view1)
                    else: v = [t.to(device, non_blocking=True) for t in b]; n += len(v[0])
                sync(device)
                return n
            one_pass()                                   # worker start-up, page cache
            t0 = time.perf_counter(); n = one_pass() + one_pass()
            out[f'{path}, {w} workers'] = n / (time.perf_counter() - t0)
            print(f'  {path:22s} {w:2d} workers: {out[f"{path}, {w} workers"]:8.1f} img/s', flush=True)
            del dl
    rates, first_batch = bench_fastai_loader(cfg, device, paths)
    return {**out, **rates}, first_batch


def bench_fastai_loader(cfg, device, paths:list) -> tuple[dict, dict]:
    """The end-to-end section's loader alone (`unlabeled_dls`: fastai's item pipeline, decode, collate), images/s per
    worker count, and with workers the time to an epoch's first batch: fastai's loader (workers started anew at
    every epoch) against `persistent_workers=True` (`fundus_ssl.data.PersistentDL`: started once)."""
    import pandas as pd
    from fundus_ssl.pretrain import unlabeled_dls
    n_rows = 32 * cfg['data_bs']       # 32 batches a pass (epoch), as in training
    df = pd.DataFrame(dict(image=(paths * (n_rows // len(paths) + 1))[:n_rows], split='train'))
    out, first_batch = {}, {}
    for w in cfg['workers']:
        for kept in ((False, True) if w else (False,)):
            dl = unlabeled_dls(df, size=cfg['data_size'], bs=cfg['data_bs'], num_workers=w, persistent_workers=kept,
                               fov_crop=False, valid_pct=0.05, device=device).train
            for _ in dl: pass                            # worker start-up, page cache
            t0, n, first = time.perf_counter(), 0, []
            for _ in range(2):
                t1 = time.perf_counter()
                for i, b in enumerate(dl):
                    if i == 0: first.append(time.perf_counter() - t1)
                    n += len(b[0])
            sync(device)
            name = f'unlabeled_dls, {w} workers' + (', kept' if kept else '')
            out[name] = n / (time.perf_counter() - t0)
            if w: first_batch[name] = 1e3 * statistics.mean(first)
            print(f'  {"unlabeled_dls" + (" (kept)" if kept else ""):22s} {w:2d} workers: {out[name]:8.1f} img/s'
                  + (f', first batch of an epoch after {first_batch[name]:.0f} ms' if w else ''), flush=True)
            if kept: dl.shutdown_workers()
            del dl
    return out, first_batch


# ---------------------------------------------------------------- segmentation
def bench_segmentation(cfg, device) -> dict:
    "Sliding-window U-Net inference on one DRIVE-sized image, images/s."
    import torch
    from fundus_ssl.synthetic import make_fundus
    from fundus_ssl.segmentation import unet_model, predict_segmentation
    from fastai.vision.core import imagenet_stats as IMAGENET_STATS
    img = make_fundus(0, size=584)['image'][:, 9:574]           # 584 x 565, DRIVE's size
    model = unet_model(cfg['seg_encoder'], n_classes=2, verbose=False, stats=IMAGENET_STATS).to(device).eval()   # timing only: any statistics
    bf16 = cfg['bf16'] and device.type == 'cuda'
    if cfg['bf16'] and not bf16: print('  bf16: off on a CPU (bfloat16 convolutions are emulated there)')
    run = lambda: predict_segmentation(model, img, window=cfg['seg_window'], overlap=0.5, batch_size=8)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        if device.type == 'cuda': run(); sync(device)       # cuDNN autotuning; a CPU has none to do
        t0 = time.perf_counter()
        for _ in range(cfg['seg_images']): probs = run()
        sync(device)
    s = (time.perf_counter() - t0) / cfg['seg_images']
    out = dict(images_s=1 / s, megapixels_s=img.shape[0] * img.shape[1] / 1e6 / s, image=list(img.shape[:2]),
               window=cfg['seg_window'], overlap=0.5, encoder=cfg['seg_encoder'], bf16=bf16, output_shape=list(probs.shape))
    print(f'  U-Net ({cfg["seg_encoder"]}), {img.shape[1]}x{img.shape[0]}, window {cfg["seg_window"]}: {1 / s:.2f} images/s', flush=True)
    return out


# ---------------------------------------------------------------- end to end
def gpu_busy_share(fn, device) -> float:
    "Kernel time / wall time while `fn` runs (torch profiler)."
    from torch.profiler import profile, ProfilerActivity
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter(); fn(); sync(device); wall = time.perf_counter() - t0
    kernels = sum(e.self_device_time_total for e in prof.key_averages() if e.device_type.name == 'CUDA') / 1e6
    return min(1.0, kernels / wall)


def e2e_learner(cfg, device, paths:list, valid_pct:float=0.01):
    "MoCo v2 on the cached images through `unlabeled_dls` and `fast_path`, with enough rows for the timed fit and one batch to spare."
    import pandas as pd
    from fundus_ssl.pretrain import unlabeled_dls, fast_path
    from fundus_ssl.moco import moco_learner
    n = math.ceil(cfg['bs'] * (2 * cfg['warmup'] + 4 * cfg['steps'] + 2) / (1 - valid_pct))
    df = pd.DataFrame(dict(image=(paths * math.ceil(n / len(paths)))[:n], split='train'))
    dls = unlabeled_dls(df, size=cfg['size'], bs=cfg['bs'], num_workers=cfg['e2e_workers'], fov_crop=False, valid_pct=valid_pct, device=device)
    learn = moco_learner(dls, cfg['encoder'], queue_size=cfg['queue'], bn_splits=bn_splits(cfg['bs']))
    return fast_path(learn, bf16=cfg['bf16'], channels_last=cfg['channels_last'], compile=cfg['compile'], fused=True, sync_free=True)


def fit_window(learn, device, start:int, stop:int) -> float:
    "Seconds from the end of step `start` to the end of step `stop` of a fit, which stops there."
    from fastai.callback.core import Callback, CancelValidException, CancelFitException
    clock = {}
    class Window(Callback):
        order = 100
        def before_validate(self): raise CancelValidException()
        def after_batch(self):
            if self.iter == start: clock['t0'] = clocks(device)[0]
            if self.iter == stop: clock['t1'] = clocks(device)[0]; raise CancelFitException()
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-4, cbs=Window())
    if 't1' not in clock: raise RuntimeError(f'end to end: the loader ended before step {stop} ({len(learn.dls.train)} batches)')
    return clock['t1'] - clock['t0']


def bench_end_to_end(cfg, device, paths:list) -> dict:
    "MoCo v2 from the cache, loader included: images/s; on CUDA also the arithmetic bound and the GPU's busy share."
    import torch
    learn = e2e_learner(cfg, device, paths)
    start, stop = 2 * cfg['warmup'], 2 * cfg['warmup'] + 4 * cfg['steps']
    ips = cfg['bs'] * (stop - start) / fit_window(learn, device, start, stop)
    cuda = device.type == 'cuda'
    busy = gpu_busy_share(lambda: fit_window(learn, device, 1, 1 + cfg['steps']), device) if cuda else None
    name = torch.cuda.get_device_name(device) if cuda else 'CPU'
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    bound = peak * 1e12 / (GFLOP_PER_IMAGE * 1e9) if peak else None
    out = dict(images_s=ips, gflop_per_image=GFLOP_PER_IMAGE, achieved_tflops=ips * GFLOP_PER_IMAGE / 1e3,
               device=name, peak_bf16_tflops=peak, bound_images_s=bound, fraction_of_bound=ips / bound if bound else None,
               gpu_busy_share=busy, workers=cfg['e2e_workers'])
    if not cuda: out['gpu_busy_share_note'] = 'None: no GPU here (the busy share is CUDA kernel time / wall time, from the torch profiler)'
    print(f"  MoCo v2 {cfg['encoder']} end to end on {name}: {ips:.0f} img/s"
          + (f", {100 * out['fraction_of_bound']:.0f}% of the {bound:.0f} img/s bound" if bound else '')
          + (f', GPU busy {100 * busy:.0f}%' if cuda else f"; {out['gpu_busy_share_note']}"), flush=True)
    return out


# ---------------------------------------------------------------- report
def print_steps(r:dict, cfg:dict):
    "The pretraining-step table: img/s and the ratios with their intervals (CPU time where measured)."
    cpu_time = any('step_ratio_cpu_time' in v for v in r['steps'].values())
    print(f"\nPretraining step, {cfg['encoder']}, {cfg['size']} px, batch {cfg['bs']}, {'bf16' if cfg['bf16'] else 'fp32'}; "
          f"median of {cfg['repeats']} alternating rounds x {cfg['steps']} steps, ratio [bootstrap 90% interval]\n")
    print('| method | callback img/s | plain img/s | step_ratio_callback_vs_plain (wall) |' + (' step_ratio_cpu_time |' if cpu_time else '')
          + ' peak MB (callback / plain) |\n|---|---|---|---|' + ('---|' if cpu_time else '') + '---|')
    for m, v in r['steps'].items():
        print(f"| {m} | {v['callback_images_s']:.1f} | {v['plain_images_s']:.1f} | {fmt_ratio(v, 'step_ratio_callback_vs_plain', 'step_ratio_interval')} |"
              + (f" {fmt_ratio(v, 'step_ratio_cpu_time', 'step_ratio_cpu_time_interval')} |" if cpu_time else '')
              + f" {v['peak_mem_mb_callback']:.0f} / {v['peak_mem_mb_plain']:.0f} |")


def print_tables(r:dict):
    cfg = r['config']
    print(f"\n## {r['name']}: {r['machine']['cpu']} ({r['machine']['cpus']} CPUs), {r['machine']['device']}, "
          f"torch {r['machine']['torch']}, {r['machine']['threads']} torch thread(s)")
    if 'steps' in r: print_steps(r, cfg)
    if 'switches' in r:
        print('\nFast path, switch by switch (MoCo v2, callback)\n\n| setting | img/s |\n|---|---|')
        for n, v in r['switches'].items(): print(f'| {n} | {v["images_s"]:.1f} |')
    if 'data' in r:
        print(f"\nData pipeline, cached {cfg['data_size']} px JPEGs -> two {cfg['view_size']} px views, batch {cfg['data_bs']}\n\n| path, workers | img/s |\n|---|---|")
        for n, v in r['data'].items(): print(f'| {n} | {v:.1f} |')
        print('\nEpoch start, `unlabeled_dls`: ms from `iter` to the first batch (fastai starts workers at every epoch; kept: once)\n\n'
              '| loader, workers | ms |\n|---|---|')
        for n, v in r['epoch_start_ms'].items(): print(f'| {n} | {v:.0f} |')
    if 'segmentation' in r:
        s = r['segmentation']
        print(f"\nSliding window: U-Net ({s['encoder']}) on {s['image'][1]}x{s['image'][0]}, window {s['window']}, overlap {s['overlap']}: "
              f"{s['images_s']:.2f} images/s ({s['megapixels_s']:.2f} MP/s)")
    if 'end_to_end' in r: print('\nEnd to end:', json.dumps(r['end_to_end']))
    print(f"\ntotal {r['seconds']:.0f} s")


def run_sections(cfg, device, skip:list, cpu_time:bool) -> dict:
    "The sections not in `skip`, each printing as it goes."
    r = {}
    e2e = cfg['end_to_end'] and 'e2e' not in skip
    with tempfile.TemporaryDirectory() as tmp:
        if 'step' not in skip: print('pretraining step:'); r['steps'] = bench_steps(cfg, device, cpu_time)
        if 'switches' not in skip: print('fast path switches (MoCo):'); r['switches'] = bench_switches(cfg, device)
        if 'data' not in skip or e2e:
            paths, r['cache'] = cached_jpegs(cfg, Path(tmp))
            print(f"cache: {r['cache']}")
        if 'data' not in skip: print('data pipeline:'); r['data'], r['epoch_start_ms'] = bench_data(cfg, device, paths)
        if 'seg' not in skip: print('sliding window:'); r['segmentation'] = bench_segmentation(cfg, device)
        if e2e: print('end to end:'); r['end_to_end'] = bench_end_to_end(cfg, device, paths)
    return r


def main():
    args = parse_args()
    threads = args.threads or (SMOKE if args.smoke else CONFIGS[args.config])['threads']
    os.environ['OMP_NUM_THREADS'] = os.environ['MKL_NUM_THREADS'] = str(threads)
    warnings.filterwarnings('ignore')
    import cv2, torch
    torch.set_num_threads(threads); cv2.setNumThreads(1)
    cfg = config(args.config, args.smoke, torch.cuda.is_available())
    device = torch.device(cfg['device'])
    if device.type == 'cuda' and not torch.cuda.is_available(): sys.exit('the gpu config needs CUDA: none here (--smoke runs its code paths on the CPU)')
    if device.type == 'cuda': torch.backends.cudnn.benchmark = True; torch.backends.cuda.matmul.allow_tf32 = True
    cpu_time = device.type == 'cpu' and threads == 1   # a step's CPU time is this thread's only when torch has no other
    t_start = time.perf_counter()
    machine = dict(cpu=platform.processor() or platform.machine(), cpus=os.cpu_count(), threads=threads, torch=torch.__version__,
                   device=torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU only', python=platform.python_version())
    print(f"config {args.config}{' (smoke)' if args.smoke else ''}: {json.dumps(cfg)}\nmachine: {json.dumps(machine)}\n"
          f"torch threads: {torch.get_num_threads()}" + ('' if cpu_time or device.type == 'cuda' else '; no CPU-time ratio with more than 1 thread'), flush=True)
    r = dict(name=args.config + ('-smoke' if args.smoke else ''), config=cfg, machine=machine, **run_sections(cfg, device, args.skip, cpu_time))
    r['seconds'] = time.perf_counter() - t_start
    print_tables(r)
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    (out/f"{r['name']}.json").write_text(json.dumps(r, indent=1))
    print(f"wrote {out/r['name']}.json")


if __name__ == '__main__': main()
