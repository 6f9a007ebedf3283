"""Speed of fundus_ssl: pretraining steps through the fastai callbacks against a plain PyTorch loop, the fast
path switch by switch, the data pipeline, and sliding-window segmentation.

    python bench/run.py cpu     # tiny encoder, 64 px, 1 torch thread: under 3 minutes
                                # (1 thread: on a 2-core machine shared with other jobs, 2 OpenMP threads spin and run 10x slower)
    python bench/run.py gpu     # ResNet-50, 224 px, batch 256, bf16, every fast-path switch (CUDA)

Each prints tables and writes bench/results/<config>.json. What is measured:

1. **Pretraining step** (MoCo v2, BYOL, SWCL): images/s and peak memory of one optimizer step (two views
   made on the device, target network, loss, backward, fused AdamW, momentum update, MoCo's enqueue), the
   same batch every step, so the loader is not in it. `callback` runs `Learner.fit` with the method's
   callback and `fast_path`; `plain` is a minimal PyTorch loop doing the same computation on a copy of the
   same model with the same optimizer and batch. The two alternate (`repeats` rounds of `steps` steps, after
   warm-up), the medians are compared: `step_ratio_callback_vs_plain` = callback step time / plain step time.
   SWCL's callback (`fundus_ssl.swcl.SWCL`) is benched when it is importable; otherwise its computation
   (SupCon over two views with labels, `fundus_ssl.losses.supcon_loss`) runs through a small `SSLCallback`.
2. **Fast path, switch by switch** (MoCo, callback path): fastai's defaults (its own Adam, recorder, fp32),
   then each switch of `fundus_ssl.pretrain.fast_path` alone, then all of the config's switches.
3. **Data pipeline**: decode + two views + collate, images/s, for fundus JPEGs at 224 px written by
   `fundus_ssl.synthetic` and passed through the pre-resized cache (`fundus_ssl.cache.build_cache`), with
   0..N torch loader workers (persistent, pinned on CUDA): the CPU path (`TwoViewItemAug`, albumentations in
   the workers) against the device path (workers only decode, `TwoViewAug` makes the views on the device).
4. **Sliding-window segmentation**: `predict_segmentation` of a U-Net on a 565 x 584 image at native
   resolution (DRIVE's size), images/s.
5. (gpu) **End to end**: MoCo v2 from the pre-resized cache through `unlabeled_dls` with 16 workers, against
   the arithmetic bound (33 GFLOP per image and step at 224 px for ResNet-50: query forward and backward,
   key forward), and the GPU's busy share (kernel time / wall time, from the torch profiler).
"""
from __future__ import annotations
import argparse, copy, json, os, platform, random, resource, statistics, sys, tempfile, time, warnings
from pathlib import Path

CONFIGS = dict(
    cpu=dict(device='cpu', threads=1, encoder='test_resnet', size=64, bs=32, bf16=False, channels_last=False, compile=False,
             steps=3, warmup=1, repeats=3, switch_repeats=2, queue=256, data_n=64, data_size=224, view_size=96, data_bs=16, workers=[0, 1, 2],
             seg_encoder='test_resnet', seg_window=256, seg_images=1, end_to_end=False),
    gpu=dict(device='cuda', threads=16, encoder='resnet50', size=224, bs=256, bf16=True, channels_last=True, compile=True,
             steps=20, warmup=5, repeats=3, switch_repeats=3, queue=65536, data_n=2048, data_size=224, view_size=224, data_bs=256,
             workers=[0, 4, 8, 16], seg_encoder='resnet50', seg_window=384, seg_images=8, end_to_end=True),
)
GFLOP_PER_IMAGE = 33.0     # ResNet-50 at 224 px: forward 4.1 GMAC = 8.2 GFLOP; query forward + backward 3 x 8.2, key forward 8.2
PEAK_BF16_TFLOPS = {'H100': 989., 'H200': 989., 'A100': 312., 'L40S': 362.}   # dense tensor-core peaks


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', choices=list(CONFIGS))
    p.add_argument('--out', default=str(Path(__file__).parent/'results'), help='folder of <config>.json')
    p.add_argument('--threads', type=int, help='torch threads (default: the config\'s)')
    p.add_argument('--skip', nargs='*', default=[], choices=['step', 'switches', 'data', 'seg', 'e2e'], help='sections left out')
    return p.parse_args()


# ---------------------------------------------------------------- timing helpers
def sync(device):
    import torch
    if device.type == 'cuda': torch.cuda.synchronize(device)

def reset_peak(device):
    import torch
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(device)

def peak_mb(device) -> float:
    "Peak memory: CUDA memory allocated since the last reset; on a CPU the process's peak RSS so far."
    import torch
    if device.type == 'cuda': return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- pretraining steps
class SameBatch:
    "A loader yielding the same device batch `n` times: the step alone is timed, not the data pipeline."
    after_batch = None
    def __init__(self, b:tuple, n:int):
        self.b, self.n, self.bs, self.device = b, n, len(b[0]), b[0].device
        self.dataset = range(1 << 20)   # MoCo's queue check counts training images
    def __len__(self): return self.n
    def __iter__(self): return (self.b for _ in range(self.n))


def swcl_note() -> str:
    "Why SWCL is benched as SupCon over two views with labels."
    try: from fundus_ssl.swcl import SWCL   # noqa: F401
    except ImportError as e: return f'SWCL: fundus_ssl.swcl is not importable ({e}); benching its computation, SupCon over two views with labels'
    return ('SWCL: fundus_ssl.swcl.SWCL is importable, but its patch-and-mask batches are not wired into this bench yet: '
            'benching its computation, SupCon over two views with labels, through an SSLCallback')


def methods(cfg, announce:bool=False):
    "name -> (model factory, callback factory, plain step factory, needs labels)."
    import torch
    from fundus_ssl.moco import moco_model, MoCoV2
    from fundus_ssl.byol import byol_model, BYOL
    from fundus_ssl.pretrain import EmbeddingNet, SSLCallback, as_encoder, cosine_momentum
    from fundus_ssl.models import mlp_head
    from fundus_ssl.losses import moco_infonce, byol_loss, supcon_loss
    enc = cfg['encoder']

    def moco_plain(model, aug, opt, ac, x, y):
        v = aug(x)
        with ac():
            k = model.target_forward(v.view2)['z']
            q = model(v.view1)['z']
            loss = moco_infonce(q.float(), k.float(), model.queue, 0.2)
        loss.backward(); opt.step(); opt.zero_grad()
        model.update_target(0.999); model.enqueue(k)

    def byol_plain(model, aug, opt, ac, x, y):
        v = aug(x)
        with ac():
            t = model.target_forward(v.view2, v.view1)['z']
            p = model(v.view1, v.view2)['p']
            loss = 2 * byol_loss(p.float(), t.float())
        loss.backward(); opt.step(); opt.zero_grad()
        model.update_target(cosine_momentum(0.99, 0.5))

    def supcon_plain(model, aug, opt, ac, x, y):
        v = aug(x)
        with ac():
            z = model(v.view1, v.view2)['z'].float()
            loss = supcon_loss(z.view(2, len(y), -1).transpose(0, 1), y, temperature=0.1)
        loss.backward(); opt.step(); opt.zero_grad()

    class SupConViews(SSLCallback):
        "SupCon over the two views of each image, positives from the labels: SWCL's computation on whole images."
        def ssl_loss(self, pred, targets, labels):
            return supcon_loss(pred['z'].view(2, len(labels), -1).transpose(0, 1), labels, temperature=0.1)

    out = dict(
        moco=(lambda: moco_model(enc, queue_size=cfg['queue'], dim=128, bn_splits=8 if cfg['bs'] >= 64 else 2),
              lambda: MoCoV2(), moco_plain, False),
        byol=(lambda: byol_model(enc), lambda: BYOL(), byol_plain, False))
    if announce: print(swcl_note())
    out['swcl'] = (lambda: EmbeddingNet(as_encoder(enc), mlp_head(as_encoder(enc).num_features, 512, 128)),
                   lambda: SupConViews('swcl'), supcon_plain, True)
    return out


def step_batch(cfg, device, labels:bool):
    import torch
    from fundus_ssl.augment import fundus_like_batch
    x = fundus_like_batch(cfg['bs'], cfg['size'], seed=0).to(device)
    return (x, torch.randint(0, 5, (cfg['bs'],), device=device)) if labels else (x,)


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


def time_callback(learn, b, steps:int, device) -> float:
    "Seconds per step of `learn.fit(1)` over `steps` identical batches (fit's start and end not counted)."
    from fastai.callback.core import Callback
    clock = {}
    class Clock(Callback):
        order = 100
        def before_train(self): sync(device); clock['t0'] = time.perf_counter()
        def after_train(self): sync(device); clock['t1'] = time.perf_counter()
    learn.dls.loaders[0] = SameBatch(b, steps)
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn.fit(1, 1e-4, cbs=Clock())
    return (clock['t1'] - clock['t0']) / steps


def plain_runner(model, cb, plain_step, cfg, device):
    "The plain loop's step function: the same model (a copy), views, optimizer and precision as the callback path."
    import torch, contextlib
    from fundus_ssl.augment import TwoViewAug
    from fundus_ssl.pretrain import compile_encoders
    aug = TwoViewAug(cb.aug_spec, size=cfg['size'])
    if cfg['channels_last']: model = model.to(memory_format=torch.channels_last)
    if cfg['compile']: compile_encoders(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    ac = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if cfg['bf16'] else contextlib.nullcontext
    model.train()
    return lambda x, y: plain_step(model, aug, opt, ac, x, y)


def time_plain(step, b, steps:int, device) -> float:
    x, y = b[0], (b[1] if len(b) > 1 else None)
    sync(device); t0 = time.perf_counter()
    for _ in range(steps): step(x, y)
    sync(device)
    return (time.perf_counter() - t0) / steps


def bench_steps(cfg, device) -> dict:
    import torch
    switches = dict(bf16=cfg['bf16'], channels_last=cfg['channels_last'], compile=cfg['compile'], fused=True, sync_free=True)
    results = {}
    for name, (make_model, make_cb, plain_step, labels) in methods(cfg, announce=True).items():
        torch.manual_seed(0)
        model = make_model().to(device)
        twin = copy.deepcopy(model)              # before any compilation: a deepcopy of compiled methods would share them
        b = step_batch(cfg, device, labels)
        cb = make_cb()
        learn = callback_learner(model, cb, b, cfg, switches)
        plain = plain_runner(twin, cb, plain_step, cfg, device)
        time_callback(learn, b, cfg['warmup'], device); time_plain(plain, b, cfg['warmup'], device)
        t_cb, t_plain, mem = [], [], {}
        for _ in range(cfg['repeats']):          # interleaved, so that a slow spell of the machine hits both
            reset_peak(device); t_cb.append(time_callback(learn, b, cfg['steps'], device)); mem['callback'] = peak_mb(device)
            reset_peak(device); t_plain.append(time_plain(plain, b, cfg['steps'], device)); mem['plain'] = peak_mb(device)
        c, p = statistics.median(t_cb), statistics.median(t_plain)
        results[name] = dict(callback_images_s=cfg['bs'] / c, plain_images_s=cfg['bs'] / p, callback_step_ms=1e3 * c,
                             plain_step_ms=1e3 * p, step_ratio_callback_vs_plain=c / p, callback_steps_ms=[1e3 * t for t in t_cb],
                             plain_steps_ms=[1e3 * t for t in t_plain], peak_mem_mb_callback=mem['callback'], peak_mem_mb_plain=mem['plain'])
        print(f'  {name:5s} callback {cfg["bs"] / c:8.1f} img/s  plain {cfg["bs"] / p:8.1f} img/s  ratio {c / p:.3f}', flush=True)
        del learn, plain, model, twin
        if device.type == 'cuda': torch.cuda.empty_cache()
    return results


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
        for n, learn in learners.items(): times[n].append(time_callback(learn, b, cfg['steps'], device))
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


def bench_data(cfg, device, paths) -> dict:
    import torch
    from torch.utils.data import DataLoader
    from fundus_ssl.augment import TwoViewAug, TwoViewItemAug
    dev_aug = TwoViewAug('mocov2', size=cfg['view_size'])
    out = {}
    for path in ('cpu (TwoViewItemAug)', 'device (TwoViewAug)'):
        item_aug = TwoViewItemAug('mocov2', size=cfg['view_size']) if path.startswith('cpu') else None
        for w in cfg['workers']:
            dl = DataLoader(JpegViews(paths, item_aug), batch_size=cfg['data_bs'], shuffle=True, drop_last=True, num_workers=w,
                            persistent_workers=w > 0, pin_memory=device.type == 'cuda', prefetch_factor=4 if w else None,
                            worker_init_fn=_worker_init)
            def one_pass():
                n = 0
                for b in dl:
                    if item_aug is None: v = dev_aug(b.to(device, non_blocking=True)); n += len(v.view1)
                    else: v = [t.to(device, non_blocking=True) for t in b]; n += len(v[0])
                sync(device)
                return n
            one_pass()                                   # worker start-up, page cache
            t0 = time.perf_counter(); n = one_pass() + one_pass()
            out[f'{path}, {w} workers'] = n / (time.perf_counter() - t0)
            print(f'  {path:22s} {w:2d} workers: {out[f"{path}, {w} workers"]:8.1f} img/s', flush=True)
            del dl
    return out


# ---------------------------------------------------------------- segmentation
def bench_segmentation(cfg, device) -> dict:
    import torch
    from fundus_ssl.synthetic import make_fundus
    from fundus_ssl.segmentation import unet_model, predict_segmentation
    img = make_fundus(0, size=584)['image'][:, 9:574]           # 584 x 565, DRIVE's size
    model = unet_model(cfg['seg_encoder'], n_classes=2, verbose=False).to(device).eval()
    run = lambda: predict_segmentation(model, img, window=cfg['seg_window'], overlap=0.5, batch_size=8)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg['bf16']):
        if device.type == 'cuda': run(); sync(device)       # cuDNN autotuning; a CPU has none to do
        t0 = time.perf_counter()
        for _ in range(cfg['seg_images']): probs = run()
        sync(device)
    s = (time.perf_counter() - t0) / cfg['seg_images']
    out = dict(images_s=1 / s, megapixels_s=img.shape[0] * img.shape[1] / 1e6 / s, image=list(img.shape[:2]),
               window=cfg['seg_window'], overlap=0.5, encoder=cfg['seg_encoder'], output_shape=list(probs.shape))
    print(f'  U-Net ({cfg["seg_encoder"]}), {img.shape[1]}x{img.shape[0]}, window {cfg["seg_window"]}: {1 / s:.2f} images/s', flush=True)
    return out


# ---------------------------------------------------------------- end to end (GPU)
def gpu_busy_share(fn, device) -> float:
    "Kernel time / wall time while `fn` runs (torch profiler)."
    import torch
    from torch.profiler import profile, ProfilerActivity
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter(); fn(); sync(device); wall = time.perf_counter() - t0
    kernels = sum(e.self_device_time_total for e in prof.key_averages() if e.device_type.name == 'CUDA') / 1e6
    return min(1.0, kernels / wall)


def bench_end_to_end(cfg, device, paths) -> dict:
    import pandas as pd, torch
    from fundus_ssl.pretrain import unlabeled_dls, fast_path
    from fundus_ssl.moco import moco_learner
    from fastai.callback.core import Callback, CancelValidException, CancelFitException
    df = pd.DataFrame(dict(image=paths * max(1, 16384 // len(paths)), split='train'))
    dls = unlabeled_dls(df, size=cfg['size'], bs=cfg['bs'], num_workers=16, fov_crop=False, valid_pct=0.01, device=device)
    learn = moco_learner(dls, cfg['encoder'], queue_size=cfg['queue'], bn_splits=8)
    fast_path(learn, bf16=True, channels_last=True, compile=cfg['compile'], fused=True, sync_free=True)
    clock = {}
    class Window(Callback):
        order = 100
        def before_validate(self): raise CancelValidException()
        def after_batch(self):
            if self.iter == clock['start']: sync(device); clock['t0'] = time.perf_counter()
            if self.iter == clock['stop']: sync(device); clock['t1'] = time.perf_counter(); raise CancelFitException()
    clock.update(start=cfg['warmup'] * 2, stop=cfg['warmup'] * 2 + 4 * cfg['steps'])
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-4, cbs=Window())
    ips = cfg['bs'] * (clock['stop'] - clock['start']) / (clock['t1'] - clock['t0'])
    clock.update(start=1, stop=1 + cfg['steps'])
    busy = gpu_busy_share(lambda: learn.fit(1, 1e-4, cbs=Window()), device)
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    bound = peak * 1e12 / (GFLOP_PER_IMAGE * 1e9) if peak else None
    out = dict(images_s=ips, gflop_per_image=GFLOP_PER_IMAGE, achieved_tflops=ips * GFLOP_PER_IMAGE / 1e3,
               device=name, peak_bf16_tflops=peak, bound_images_s=bound, fraction_of_bound=ips / bound if bound else None,
               gpu_busy_share=busy, workers=16)
    print(f'  MoCo v2 {cfg["encoder"]} end to end: {ips:.0f} img/s ({out["achieved_tflops"]:.0f} TFLOP/s'
          + (f', {100 * out["fraction_of_bound"]:.0f}% of the {bound:.0f} img/s bound' if bound else '') + f'), GPU busy {100 * busy:.0f}%')
    return out


# ---------------------------------------------------------------- report
def print_tables(r:dict):
    cfg = r['config']
    print(f"\n## {r['name']}: {r['machine']['cpu']} ({r['machine']['cpus']} CPUs), {r['machine']['device']}, "
          f"torch {r['machine']['torch']}, {r['machine']['threads']} torch thread(s)")
    if 'steps' in r:
        print(f"\nPretraining step, {cfg['encoder']}, {cfg['size']} px, batch {cfg['bs']}, {'bf16' if cfg['bf16'] else 'fp32'}; "
              f"median of {cfg['repeats']} x {cfg['steps']} steps\n")
        print('| method | callback img/s | plain img/s | step_ratio_callback_vs_plain | peak MB (callback / plain) |\n|---|---|---|---|---|')
        for m, v in r['steps'].items():
            print(f"| {m} | {v['callback_images_s']:.1f} | {v['plain_images_s']:.1f} | {v['step_ratio_callback_vs_plain']:.3f} | "
                  f"{v['peak_mem_mb_callback']:.0f} / {v['peak_mem_mb_plain']:.0f} |")
    if 'switches' in r:
        print('\nFast path, switch by switch (MoCo v2, callback)\n\n| setting | img/s |\n|---|---|')
        for n, v in r['switches'].items(): print(f'| {n} | {v["images_s"]:.1f} |')
    if 'data' in r:
        print(f"\nData pipeline, cached {cfg['data_size']} px JPEGs -> two {cfg['view_size']} px views, batch {cfg['data_bs']}\n\n| path, workers | img/s |\n|---|---|")
        for n, v in r['data'].items(): print(f'| {n} | {v:.1f} |')
    if 'segmentation' in r:
        s = r['segmentation']
        print(f"\nSliding window: U-Net ({s['encoder']}) on {s['image'][1]}x{s['image'][0]}, window {s['window']}, overlap {s['overlap']}: "
              f"{s['images_s']:.2f} images/s ({s['megapixels_s']:.2f} MP/s)")
    if 'end_to_end' in r: print('\nEnd to end:', json.dumps(r['end_to_end']))
    print(f"\ntotal {r['seconds']:.0f} s")


def main():
    args = parse_args()
    cfg = dict(CONFIGS[args.config])
    threads = args.threads or cfg['threads']
    os.environ['OMP_NUM_THREADS'] = os.environ['MKL_NUM_THREADS'] = str(threads)
    warnings.filterwarnings('ignore')
    import cv2, torch
    torch.set_num_threads(threads); cv2.setNumThreads(1)
    device = torch.device(cfg['device'])
    if device.type == 'cuda' and not torch.cuda.is_available(): sys.exit('the gpu config needs CUDA: none here')
    if device.type == 'cuda': torch.backends.cudnn.benchmark = True; torch.backends.cuda.matmul.allow_tf32 = True
    t_start = time.perf_counter()
    machine = dict(cpu=platform.processor() or platform.machine(), cpus=os.cpu_count(), threads=threads, torch=torch.__version__,
                   device=torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU only', python=platform.python_version())
    print(f"config {args.config}: {json.dumps(cfg)}\nmachine: {json.dumps(machine)}\ntorch threads: {torch.get_num_threads()}", flush=True)
    r = dict(name=args.config, config=cfg, machine=machine)
    with tempfile.TemporaryDirectory() as tmp:
        if 'step' not in args.skip: print('pretraining step:'); r['steps'] = bench_steps(cfg, device)
        if 'switches' not in args.skip: print('fast path switches (MoCo):'); r['switches'] = bench_switches(cfg, device)
        if 'data' not in args.skip or (cfg['end_to_end'] and 'e2e' not in args.skip):
            paths, r['cache'] = cached_jpegs(cfg, Path(tmp))
            print(f"cache: {r['cache']}")
        if 'data' not in args.skip: print('data pipeline:'); r['data'] = bench_data(cfg, device, paths)
        if 'seg' not in args.skip: print('sliding window:'); r['segmentation'] = bench_segmentation(cfg, device)
        if cfg['end_to_end'] and 'e2e' not in args.skip: print('end to end:'); r['end_to_end'] = bench_end_to_end(cfg, device, paths)
    r['seconds'] = time.perf_counter() - t_start
    print_tables(r)
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    (out/f'{args.config}.json').write_text(json.dumps(r, indent=1))
    print(f'wrote {out/args.config}.json')


if __name__ == '__main__': main()
