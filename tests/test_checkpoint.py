"Resumable runs: kill a real training process with SIGKILL, resume it in a new process, compare weights and loss history with an uninterrupted run."
import os, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from fundus_ssl.checkpoint import checkpoints, read_checkpoint

SCRIPTS = Path(__file__).parent/'scripts'
sys.path.insert(0, str(SCRIPTS))
import resume_run

def _start(*args):
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    return subprocess.Popen([sys.executable, str(SCRIPTS/'resume_run.py'), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

def _kill_after(proc, run:Path, epoch:int, timeout:float=300.):
    "SIGKILL `proc` as soon as `run` holds the checkpoint after `epoch` epochs."
    t0 = time.time()
    while not any(e >= epoch for e in checkpoints(run)):
        if proc.poll() is not None: pytest.fail(f'training process ended early (rc {proc.returncode}):\n{proc.stdout.read()}')
        if time.time() - t0 > timeout: proc.kill(); pytest.fail(f'no checkpoint after epoch {epoch} in {timeout} s')
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

def _assert_same_state(a:dict, b:dict):
    assert a.keys() == b.keys()
    for k in a: assert torch.equal(a[k], b[k]), f'{k} differs: max |diff| {(a[k].double() - b[k].double()).abs().max()}'

@pytest.mark.parametrize('kind', ['plain', 'moco'])
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, kind):
    run, epochs = tmp_path/'run', 6
    proc = _start('--path', run, '--kind', kind, '--epochs', epochs, '--sleep', 0.5)
    _kill_after(proc, run, 2)
    assert proc.returncode == -signal.SIGKILL
    done = max(checkpoints(run))
    assert 2 <= done < epochs, f'killed after {done} epochs: nothing left to resume'
    ckpt = torch.load(checkpoints(run)[done], weights_only=True)     # plain torch, no allow-list: no objects inside
    assert ckpt['epoch'] == done

    resumed = _start('--path', run, '--kind', kind, '--epochs', epochs, '--resume', '--out', tmp_path/'resumed.pth')
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    reference = resume_run.train(tmp_path/'reference', kind, epochs)   # uninterrupted, in this process
    ref_state = reference.model.state_dict()
    _assert_same_state(torch.load(tmp_path/'resumed.pth', weights_only=True), ref_state)
    final = read_checkpoint(checkpoints(run)[epochs])
    _assert_same_state(final['model'], ref_state)
    assert final['train_iter'] == reference.train_iter == epochs * len(reference.dls.train)
    history = final['recorder']     # the resumed process's loss history covers the epochs before the kill too
    assert torch.equal(history['losses'], torch.stack(reference.recorder.losses).as_subclass(torch.Tensor))
    assert len(history['losses']) == reference.train_iter and history['iters'] == reference.recorder.iters
    assert not torch.equal(ref_state['queue'], resume_run.LEARNERS[kind][0]().model.queue)   # the queue moved
