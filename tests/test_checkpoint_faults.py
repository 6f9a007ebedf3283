"""Damaged checkpoints (flipped bytes, truncated, zero-byte, leftover temporary files, files without a checksum), the
loss history of a resumed run, and strict JSON."""
import json, math, sys, warnings
from pathlib import Path
import numpy as np
import pytest
import torch
from fastai.callback.core import Callback, CancelFitException
from fundus_ssl.checkpoint import (SaveState, CheckpointWarning, checkpoints, latest_checkpoint, read_checkpoint,
                                   save_checkpoint, verify_checkpoint, write_json)
from fundus_ssl.models import CheckpointError
from fundus_ssl.pretrain import DeviceSmoothLoss

sys.path.insert(0, str(Path(__file__).parent/'scripts'))
from tiny_runs import queue_net_learner

EPOCHS = 4

class StopAfter(Callback):
    "Cancel the fit after `n` epochs, once SaveState has written their checkpoint (as a kill would)."
    order = SaveState.order + 1
    def __init__(self, n): self.n = n
    def after_epoch(self):
        if self.epoch + 1 == self.n: raise CancelFitException

class DeviceSmooth(Callback):
    "Put the package's DeviceSmoothLoss in the recorder, as FastPath does."
    order = 0
    def before_fit(self):
        rec = self.learn.recorder
        if not isinstance(rec.smooth_loss, DeviceSmoothLoss): vars(rec)['smooth_loss'] = DeviceSmoothLoss(rec.smooth_loss.beta)

def fit(path=None, stop=None, resume=False, smooth=None, keep=2):
    learn = queue_net_learner()
    cbs = ([SaveState(path, resume=resume, keep=keep)] if path else []) + ([StopAfter(stop)] if stop else []) + ([smooth()] if smooth else [])
    with learn.no_logging(): learn.fit_one_cycle(EPOCHS, 1e-2, cbs=cbs)
    return learn

@pytest.fixture(scope='module')
def reference(): return fit()

@pytest.fixture
def interrupted(tmp_path):
    "A run stopped after 3 of 4 epochs, keeping its checkpoints after epochs 2 and 3."
    fit(tmp_path/'run', stop=3)
    assert list(checkpoints(tmp_path/'run')) == [2, 3]
    return tmp_path/'run'

def flip_byte(f:Path, where:float=0.5):
    data = bytearray(f.read_bytes())
    data[int(len(data) * where)] ^= 0x10
    f.write_bytes(bytes(data))

def same_weights(a, b): return all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))

# --- item 3: a checksum with every checkpoint ---

@pytest.mark.parametrize('where', [0.01, 0.5, 0.99])
def test_flipped_byte_is_an_error_naming_the_file(tmp_path, where):
    f = save_checkpoint(dict(w=torch.randn(1000), step=3), tmp_path/'c.pth')
    assert verify_checkpoint(f) is True
    flip_byte(f, where)
    with pytest.raises(CheckpointError, match=r'c\.pth.*checksum'): read_checkpoint(f)
    with pytest.raises(CheckpointError, match=r'c\.pth'): verify_checkpoint(f)

def test_checkpoint_still_reads_with_plain_torch(tmp_path):
    f = save_checkpoint(dict(w=torch.arange(4.), epoch=2), tmp_path/'c.pth')
    assert torch.load(f, weights_only=True)['epoch'] == 2

def test_file_without_checksum_reads_with_a_warning(tmp_path):
    torch.save(dict(w=torch.arange(3.)), tmp_path/'old.pth')
    with pytest.warns(CheckpointWarning, match=r'old\.pth.*no checksum'): state = read_checkpoint(tmp_path/'old.pth')
    assert torch.equal(state['w'], torch.arange(3.))
    assert verify_checkpoint(tmp_path/'old.pth') is False

@pytest.mark.parametrize('damage', ['zero', 'truncated', 'truncated_tail'])
def test_damaged_file_is_an_error_naming_it(tmp_path, damage):
    f = save_checkpoint(dict(w=torch.randn(1000)), tmp_path/'c.pth')
    data = f.read_bytes()
    f.write_bytes({'zero': b'', 'truncated': data[:len(data) // 2], 'truncated_tail': data[:-10]}[damage])
    with pytest.raises(CheckpointError, match=r'c\.pth'): read_checkpoint(f)

# --- item 4: resume falls back to the newest intact checkpoint ---

@pytest.mark.parametrize('damage', ['flipped', 'truncated', 'zero'])
def test_resume_falls_back_to_the_newest_intact_checkpoint(reference, interrupted, damage):
    latest = checkpoints(interrupted)[3]
    if damage == 'flipped': flip_byte(latest)
    elif damage == 'truncated': latest.write_bytes(latest.read_bytes()[:1000])
    else: latest.write_bytes(b'')
    with pytest.warns(CheckpointWarning, match=r'state_0003\.pth'):
        assert latest_checkpoint(interrupted) == checkpoints(interrupted)[2]
    with pytest.warns(CheckpointWarning, match=r'state_0003\.pth.*\n.*using .*state_0002\.pth'):
        resumed = fit(interrupted, resume=True)
    assert same_weights(resumed, reference)
    assert list(checkpoints(interrupted)) == [3, 4]
    assert verify_checkpoint(checkpoints(interrupted)[3])   # the damaged file was written anew

def test_all_damaged_is_an_error_naming_the_files(interrupted):
    for f in checkpoints(interrupted).values(): f.write_bytes(b'')
    with pytest.raises(CheckpointError, match=r'(?s)state_0003\.pth: an empty file.*state_0002\.pth: an empty file'): fit(interrupted, resume=True)
    with pytest.raises(CheckpointError, match=r'no intact checkpoint'): latest_checkpoint(interrupted)

def test_leftover_temporary_files_are_removed(reference, interrupted):
    tmp = interrupted/'.state_0004.pth.12345.tmp'
    tmp.write_bytes(b'half a checkpoint')
    with pytest.warns(CheckpointWarning, match=r'\.state_0004\.pth\.12345\.tmp'): resumed = fit(interrupted, resume=True)
    assert not tmp.exists()
    assert same_weights(resumed, reference)

def test_checkpoint_without_checksum_resumes_with_a_warning(reference, interrupted):
    f = checkpoints(interrupted)[3]
    torch.save(torch.load(f, weights_only=True), f)   # as fundus_ssl wrote it before checksums
    assert verify_checkpoint(f) is False
    with pytest.warns(CheckpointWarning, match=r'state_0003\.pth.*no checksum'): resumed = fit(interrupted, resume=True)
    assert same_weights(resumed, reference)

# --- item 5: the loss history survives a resume ---

@pytest.mark.parametrize('smooth', [None, DeviceSmooth], ids=['AvgSmoothLoss', 'DeviceSmoothLoss'])
def test_resumed_run_has_the_whole_history(tmp_path, smooth):
    ref = fit(smooth=smooth)
    fit(tmp_path/'run', stop=2, smooth=smooth)
    resumed = fit(tmp_path/'run', resume=True, smooth=smooth)
    r, u = resumed.recorder, ref.recorder
    assert len(u.losses) == EPOCHS * len(ref.dls.train)
    assert len(r.losses) == len(u.losses)
    assert all(torch.equal(a, b) for a, b in zip(r.losses, u.losses))     # exact: the smoothed loss did not restart
    assert r.iters == u.iters and r.lrs == u.lrs
    assert [list(v) for v in r.values] == [list(v) for v in u.values]
    assert r.smooth_loss.count == u.smooth_loss.count and torch.equal(r.smooth_loss.val, u.smooth_loss.val)
    assert type(r.smooth_loss) is type(u.smooth_loss)

# --- strict JSON ---

def test_write_json_refuses_nan_naming_the_key(tmp_path):
    f = tmp_path/'metrics.json'
    with pytest.raises(ValueError, match=r"metrics\.json.*\['history'\]\[1\]\['loss'\].*nan"):
        write_json(f, dict(steps=2, history=[dict(loss=0.5), dict(loss=float('nan'))]))
    assert not f.exists() and list(tmp_path.iterdir()) == []    # nothing written, no temporary file left
    with pytest.raises(ValueError, match=r"\['x'\]\[2\].*inf"): write_json(f, dict(x=np.array([1., 2., np.inf])))

def test_write_json_converts_numbers_and_can_write_null(tmp_path):
    f = write_json(tmp_path/'m.json', dict(a=np.float32(0.5), b=torch.tensor([1, 2]), c=(np.int64(3), Path('x')), d=float('nan')), nonfinite='null')
    assert json.loads(f.read_text()) == dict(a=0.5, b=[1, 2], c=[3, 'x'], d=None)
    json.loads(f.read_text(), parse_constant=lambda c: pytest.fail(f'{c} in strict JSON'))
