"""`fundus_ssl pretrain` as users launch it: the console script under torchrun (2 gloo processes on the CPU) against
one process on the same global batch, on the package's own normalised loaders (`unlabeled_dls`, `swcl_dls`)."""
import json, os, shutil, socket, subprocess, sys
from pathlib import Path
import pandas as pd
import pytest
import torch
from fundus_ssl.checkpoint import latest_checkpoint, read_checkpoint

EXE = shutil.which('fundus_ssl') or str(Path(sys.executable).parent/'fundus_ssl')
TINY = ['--n-images', '24', '--valid-pct', '0.2', '--image-size', '32', '--batch-size', '8', '--queue-size', '16', '--epochs', '2', '--seed', '3']
FIXED = ['--views', 'fixed', '--no-shuffle-bn']

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def launch(out:Path, args:list, nproc:int=1) -> dict:
    "Run `fundus_ssl pretrain` (under torchrun with `nproc` > 1) into `out`; its metrics.json."
    cmd = [EXE, 'pretrain', *args, '--out-dir', str(out)]
    if nproc > 1: cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '1', '--nproc_per_node', str(nproc),
                         '--master_addr', '127.0.0.1', '--master_port', str(_free_port()), *cmd]
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    return json.loads((out/'metrics.json').read_text())

def final_state(out:Path) -> dict:
    "The model state of the last checkpoint, without BatchNorm running statistics (DDP broadcasts rank 0's)."
    sd = read_checkpoint(latest_checkpoint(out/'checkpoints'))['model']
    return {k: v for k, v in sd.items() if 'running_' not in k and 'num_batches' not in k}

def losses(out:Path) -> torch.Tensor: return torch.tensor([l['loss'] for l in json.loads((out/'losses.json').read_text())])

def assert_same_run(a:Path, b:Path):
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) > 2
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
    sa, sb = final_state(a), final_state(b)
    assert sa.keys() == sb.keys()
    for k in sa: torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-5, msg=k)

@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
    "The generated EyePACS-like images both runs read (generated once, so each run reads the same files)."
    from fundus_ssl.synthetic import write_eyepacs_like
    return write_eyepacs_like(tmp_path_factory.mktemp('data')/'EyePACS', n_patients=12, size=64, seed=3)

def test_moco_two_processes_train_as_one(synthetic, tmp_path):
    """MoCo v2 on `unlabeled_dls` (normalised images: the recipe that crashed at the first batch in every process),
    2 processes x 4 images vs 1 x 8, fixed views, 2 BatchNorm groups over the global batch: the same losses, queue
    and weights to 1e-5."""
    args = [*TINY, *FIXED, '--reader', 'eyepacs', '--root', str(synthetic), '--bn-splits', '2']
    one, two = launch(tmp_path/'one', args), launch(tmp_path/'two', args, nproc=2)
    assert (one['world_size'], two['world_size']) == (1, 2) and two['ranks_in_step']
    assert_same_run(tmp_path/'one', tmp_path/'two')
    h1, h2 = pd.read_csv(tmp_path/'one'/'history.csv'), pd.read_csv(tmp_path/'two'/'history.csv')
    assert h1['epoch'].tolist() == h2['epoch'].tolist() == [1, 2] and set(h2['stage']) == {'pretrain'}   # rank 0 alone writes
    assert list(h2.columns) == ['epoch', 'stage', 'train_loss', 'valid_loss', 'lr', 'images_per_s', 'seconds']
    torch.testing.assert_close(torch.tensor(h1['train_loss'].values), torch.tensor(h2['train_loss'].values), rtol=1e-5, atol=1e-5)
    assert (h2['images_per_s'] > 0).all() and h2['valid_loss'].notna().all()
    q1, q2 = final_state(tmp_path/'one')['queue'], final_state(tmp_path/'two')['queue']
    torch.testing.assert_close(q1, q2, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(q1, torch.nn.functional.normalize(q1.new_zeros(q1.shape) + 1, dim=0))   # filled with keys
    import timm
    enc = timm.create_model('test_resnet', pretrained=True, num_classes=0,
                            pretrained_cfg_overlay=dict(file=str(tmp_path/'two'/'encoder.safetensors')))
    assert enc.eval()(torch.rand(2, 3, 32, 32)).shape == (2, enc.num_features)

def test_tensorboard_logger(tmp_path):
    "`--loggers tensorboard` writes TensorBoard event files beside history.csv (skipped where tensorboard is not installed)."
    pytest.importorskip('tensorboard')
    launch(tmp_path/'tb', [*TINY, '--epochs', '1', '--loggers', 'tensorboard'])
    assert len(list((tmp_path/'tb'/'tensorboard'/'pretrain').glob('events.out.tfevents.*'))) == 1
    assert len(pd.read_csv(tmp_path/'tb'/'history.csv')) == 1

def test_random_views_keep_every_process_in_step(tmp_path):
    """BYOL (random views, BatchNorm in its heads) in 2 processes: all end with rank 0's weights (MoCo v2 with random
    views and shuffle-BN: tests/test_distributed.py)."""
    m = launch(tmp_path/'byol', [*TINY, '--method', 'byol', '--epochs', '1'], nproc=2)
    assert m['world_size'] == 2 and m['ranks_in_step'] and m['steps'] > 0

@pytest.fixture(scope='module')
def patch_dir(tmp_path_factory):
    "A SWCL patch dataset of 24 synthetic images scored by an untrained pseudo-labeler."
    from fundus_ssl.synthetic import write_odir_like, write_eyepacs_like
    from fundus_ssl.datasets import read_odir, read_eyepacs
    from fundus_ssl.pseudolabel import pseudo_labeler
    from fundus_ssl.patches import build_patch_dataset
    root = tmp_path_factory.mktemp('swcl')
    images = pd.concat([read_odir(write_odir_like(root/'ODIR', n_patients=6, size=64, seed=1)),
                        read_eyepacs(write_eyepacs_like(root/'EyePACS', n_patients=6, size=64, seed=2))], ignore_index=True)
    torch.manual_seed(0)
    build_patch_dataset(images, pseudo_labeler('resnet10t'), root/'patches', size=64, patch_size=32)
    return root/'patches'

def test_swcl_two_processes_train_as_one(patch_dir, tmp_path):
    "SWCL (gathered SupCon) on an encoder without BatchNorm, fixed views: 2 processes train as 1 on the global batch."
    args = ['--method', 'swcl', '--patches', str(patch_dir), '--encoder', 'test_convnext', '--image-size', '32',
            '--batch-size', '16', '--epochs', '2', '--lr', '1e-3', '--views', 'fixed', '--seed', '3']
    one, two = launch(tmp_path/'one', args), launch(tmp_path/'two', args, nproc=2)
    assert two['world_size'] == 2 and two['ranks_in_step']
    assert_same_run(tmp_path/'one', tmp_path/'two')

def test_bad_parameters_fail_before_any_work(tmp_path, capsys):
    "A misspelled option or value exits at once with a message naming it, and writes nothing (the installed script, and main)."
    p = subprocess.run([EXE, 'pretrain', '--label-schem', 'position', '--out-dir', str(tmp_path/'run')], capture_output=True, text=True)
    assert p.returncode == 2 and 'unrecognized arguments: --label-schem' in p.stderr, p.stderr[-2000:]
    from fundus_ssl.cli import main
    for args, says in [(['--method', 'mocov3'], "method='mocov3'"), (['--encoder', 'resnet_nope'], "encoder='resnet_nope'"),
                       (['--batch-size', '0'], 'batch_size=0'), (['--channels', 'grene'], "channels='grene': expected one of ('rgb', 'green', 'gray')"),
                       (['--reader', 'eyepacs', '--root', str(tmp_path/'none')], 'root=')]:
        with pytest.raises(SystemExit) as e: main(['pretrain', *args, '--out-dir', str(tmp_path/'run')])
        assert says in str(e.value)
    assert not (tmp_path/'run').exists()
