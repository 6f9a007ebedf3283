"""DRIVE vessel segmentation: a U-Net with a ResNet-18 encoder from random init, trained for a wall-clock budget.

Trains on the 20 DRIVE training images (random patches at native resolution) and reports the 20 test
images' mean Dice, sensitivity, specificity, accuracy and AUC inside the FOV masks shipped with DRIVE,
against `1st_manual`, predicted at native resolution by blended sliding windows
(`fundus_ssl.segmentation.evaluate_segmentation`).

    FUNDUS_DATA=/path/to/data python bench/drive_unet.py              # 20 minutes, 2 CPU threads
    python bench/drive_unet.py --root /path/to/DRIVE --minutes 5      # a short check
    python bench/drive_unet.py --device cuda --full-res --minutes 20  # the GPU setting

Default (CPU) setting, chosen for 20 minutes on 2 idle cores:
- input: green channel + CLAHE (clip 2, 8x8 tiles) + gamma 1.2, replicated on 3 channels
  (`green_clahe_rgb`), normalised with the training images' own mean and std (no ImageNet weights here);
  `--input rgb` uses the colour image instead;
- images pre-decoded once, preprocessed on the whole image and cropped to the FOV's bounding box;
  training items are random 128 px patches of these arrays (`segmentation_dls(patch_size=...)` with
  `fundus_augs`: zoom +-10%, any rotation, horizontal and vertical flips, brightness/contrast jitter);
- U-Net: fastai `DynamicUnet` on ResNet-18's first 4 feature levels (`depth=4`: layer4, 1/32, dropped),
  without the full-resolution `last_cross` block: about 4x cheaper per pixel than the full fastai U-Net,
  which matters more on 2 cores than the receptive field lost (vessels are local);
- batch 8, Adam (fastai: wd 0.01, betas 0.9/0.99), one-cycle to lr 3e-3 over the whole budget
  (`TimeBudget` drives the schedule by elapsed time, then stops), no validation during training;
- loss Dice + BCE (`DiceBCELoss`); threshold 0.5 (`--tune` also reports a threshold tuned on the
  training images, by mean Dice, and the test figures at it; the test images never choose it);
- inference: 384 px windows, overlap 0.5, Gaussian blending (4 windows per DRIVE image).

`--full-res` (meant for a GPU, `--device cuda`): the full fastai U-Net (all 5 levels, `last_cross`),
256 px patches, batch 16, lr 2e-3, mixed precision on CUDA.

`--clock cpu` counts the process's CPU time / threads instead of wall time: on a machine shared with
other jobs it estimates what an idle machine gets in the same budget.

Figures (mean over the 20 test images, threshold 0.5):
- 2-core CPU (AMD EPYC) shared with 4-5 other jobs (load 5-8), `--minutes 20 --clock cpu --tune`, default
  setting, 2026-11-23: 20 CPU-minutes per thread (2403 CPU s, 3675 s wall) gave only 489 batches of 8
  patches, yet mean test Dice 0.798 (sensitivity 0.778, specificity 0.976, accuracy 0.950, AUC 0.969;
  worst image 0.765, best 0.840); the threshold tuned on the training images (0.4) gives Dice 0.799.
  On an idle machine the same budget trains several times more batches.
"""
from __future__ import annotations
import argparse, json, os, time, warnings
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--root', help='the DRIVE folder (default: $FUNDUS_DATA/DRIVE)')
    p.add_argument('--minutes', type=float, default=20, help='training budget')
    p.add_argument('--clock', choices=['wall', 'cpu'], default='wall', help='what the budget counts (see above)')
    p.add_argument('--device', default='cpu', help="'cpu', 'cuda', 'cuda:1'...")
    p.add_argument('--gpu', action='store_const', const='cuda', dest='device', help='same as --device cuda')
    p.add_argument('--full-res', action='store_true', help='the full U-Net, 256 px patches, batch 16 (GPU setting)')
    p.add_argument('--threads', type=int, default=2, help='torch threads (CPU)')
    p.add_argument('--input', choices=['green', 'rgb'], default='green', help='green + CLAHE (3 channels) or RGB')
    p.add_argument('--patch', type=int, help='training patch side (default 128; 256 with --full-res)')
    p.add_argument('--bs', type=int, help='batch size (default 8; 16 with --full-res)')
    p.add_argument('--lr', type=float, help='one-cycle maximum learning rate (default 3e-3; 2e-3 with --full-res)')
    p.add_argument('--depth', type=int, help='encoder feature levels kept (default 4; 5 with --full-res)')
    p.add_argument('--last-cross', action=argparse.BooleanOptionalAction, default=None,
                   help='the full-resolution block of the fastai U-Net (default off; on with --full-res)')
    p.add_argument('--channels-last', action='store_true', help='channels-last memory format (slower on the AVX2 CPU tried)')
    p.add_argument('--window', type=int, default=384, help='inference window side')
    p.add_argument('--overlap', type=float, default=0.5, help='inference window overlap')
    p.add_argument('--tune', action='store_true', help='also tune the threshold on the training images')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', help='write the figures and settings as JSON here')
    args = p.parse_args(argv)
    full = dict(patch=256, bs=16, lr=2e-3, depth=5, last_cross=True)
    light = dict(patch=128, bs=8, lr=3e-3, depth=4, last_cross=False)
    for k, v in (full if args.full_res else light).items():
        if getattr(args, k) is None: setattr(args, k, v)
    return args


def drive_root(args) -> Path:
    from fundus_ssl.core import fundus_data_root
    root = Path(args.root) if args.root else fundus_data_root('DRIVE')
    if root is None: raise SystemExit('no DRIVE copy: pass --root /path/to/DRIVE or set FUNDUS_DATA')
    return root


def training_arrays(train_df, preprocess):
    "Per training image: the (preprocessed) image and its vessel mask (0/255), cropped to the FOV box."
    from fundus_ssl.io import read_image, read_mask
    from fundus_ssl.preprocess import crop_to_fov
    out = []
    for _, row in train_df.iterrows():
        img = read_image(row['image'])
        img = preprocess(img) if preprocess else img
        out.append(crop_to_fov(img, read_mask(row['mask']) * 255, mask=read_mask(row['fov']) > 0))
    return out


def patch_dls(arrays, args, device, epoch_patches:int=160):
    "Random-patch DataLoaders over in-memory arrays; the 'valid' split (one image) is never run."
    import pandas as pd
    from fundus_ssl.data import segmentation_dls, fundus_augs, channel_stats
    repeats = max(1, epoch_patches // len(arrays))
    rows = [dict(image=i, mask=m, split='train') for _ in range(repeats) for i, m in arrays]
    rows.append(dict(image=arrays[0][0], mask=arrays[0][1], split='valid'))
    df = pd.DataFrame(rows)
    df.attrs['mask_encoding'] = 'binary'
    kw = dict(size=None, patch_size=args.patch, fov_crop=False)
    augs = (fundus_augs(**kw, train=True, scale=0.1, rotate=180, hflip=0.5, vflip=0.5, jitter=(0.2, 0.2, 0, 0), color_p=0.8),
            fundus_augs(**kw, train=False))
    stats = channel_stats([i for i, _ in arrays])
    return segmentation_dls(df, codes=['background', 'vessel'], augs=augs, stats=stats, bs=args.bs,
                            size=None, patch_size=args.patch, fov_crop=False, device=device), stats


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault('OMP_NUM_THREADS', str(args.threads))
    warnings.filterwarnings('ignore', message='.*torch.jit.script.*')
    import cv2, numpy as np, torch
    from fastai.callback.core import Callback, CancelValidException
    from fastai.callback.channelslast import ChannelsLast
    from fundus_ssl.datasets import read_drive
    from fundus_ssl.segmentation import (segmentation_learner, evaluate_segmentation, tune_threshold, TimeBudget,
                                         green_clahe_rgb)
    torch.set_num_threads(args.threads); cv2.setNumThreads(1)
    torch.manual_seed(args.seed); np.random.seed(args.seed)
    import random; random.seed(args.seed)
    device = torch.device(args.device)

    df = read_drive(drive_root(args))
    train_df, test_df = df[df.split == 'train'], df[df.split == 'test']
    preprocess = green_clahe_rgb if args.input == 'green' else None
    t0 = time.perf_counter()
    dls, stats = patch_dls(training_arrays(train_df, preprocess), args, device)
    print(f'{len(train_df)} training images, {len(test_df)} test images; data ready in {time.perf_counter() - t0:.1f} s; '
          f'input {args.input}, stats {stats}')

    learn = segmentation_learner(dls, 'resnet18', depth=args.depth, metrics=[], preprocess=preprocess, fov_diameter=False,
                                 unet_kwargs=dict(last_cross=args.last_cross), verbose=False)   # the model stores its preprocessing
    n_params = sum(p.numel() for p in learn.model.parameters())
    if args.channels_last: learn.add_cb(ChannelsLast())
    if device.type == 'cuda': learn.to_fp16()

    class NoValidation(Callback):
        def before_validate(self): raise CancelValidException()

    class Progress(Callback):
        "Print the smoothed training loss every 30 s."
        order = 60
        def before_fit(self): self.next, self.t0, self.n = 30, time.perf_counter(), 0
        def after_batch(self):
            if not self.training: return
            self.n += 1
            if time.perf_counter() - self.t0 >= self.next:
                self.next += 30
                print(f'  {time.perf_counter() - self.t0:6.0f} s  {self.n:5d} batches  {self.n * args.bs:6d} patches  '
                      f'loss {self.learn.smooth_loss.item():.4f}  lr {self.opt.hypers[-1]["lr"]:.2e}', flush=True)

    budget = TimeBudget(args.minutes * 60, args.clock)
    print(f'training a U-Net (resnet18, depth {args.depth}, last_cross {args.last_cross}, {n_params/1e6:.1f} M parameters) '
          f'on {args.patch} px patches, batch {args.bs}, lr {args.lr}, for {args.minutes} min ({args.clock} clock) on {device}', flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(100_000, args.lr, cbs=[budget, NoValidation(), Progress()])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n_batches = learn.train_iter
    print(f'trained {n_batches} batches ({n_batches * args.bs} patches) in {wall:.0f} s wall, {cpu:.0f} s CPU', flush=True)

    kw = dict(window=args.window, overlap=args.overlap, preprocess=preprocess, batch_size=4)
    t0 = time.perf_counter()
    table, means = evaluate_segmentation(learn, test_df, 0.5, **kw)
    print(f'test (threshold 0.5, {time.perf_counter() - t0:.0f} s):')
    print(table.to_string(float_format=lambda v: f'{v:.4f}'))
    print('mean: ' + '  '.join(f'{k} {v:.4f}' for k, v in means.items()), flush=True)
    result = dict(settings=vars(args), batches=n_batches, train_wall_s=wall, train_cpu_s=cpu, threshold=0.5,
                  test=means.to_dict())
    if args.tune:
        best, curve = tune_threshold(learn, train_df, **kw)
        _, tuned = evaluate_segmentation(learn, test_df, best, **kw)
        print(f'threshold tuned on the training images: {best} (training Dice {curve.max():.4f}); '
              'test mean: ' + '  '.join(f'{k} {v:.4f}' for k, v in tuned.items()))
        result.update(tuned_threshold=best, test_tuned=tuned.to_dict())
    print(json.dumps({k: v for k, v in result.items() if k != 'settings'}))
    if args.out: Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == '__main__':
    main()
