"Resumable runs: kill a real training process with SIGKILL, resume it in a new process, compare weights and loss history with an uninterrupted run."
import os, signal, subprocess, sys
from pathlib import Path
import pytest
import torch
from fundus_ssl.checkpoint import checkpoints, read_checkpoint
import hang_guard
from hang_guard import communicate, wait_for

SCRIPTS = Path(__file__).parent/'scripts'
sys.path.insert(0, str(SCRIPTS))
import resume_run

def _start(*args):
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    return subprocess.Popen([sys.executable, str(SCRIPTS/'resume_run.py'), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

def _kill_when_paused(proc, run:Path):
    "SIGKILL `proc` once it has written its `--pause-after` checkpoint and paused: the kill cannot land an epoch later."
    wait_for(Path(f'{run}.ready'), proc, 'the training process')
    proc.send_signal(signal.SIGKILL)
    proc.wait()

def _assert_same_state(a:dict, b:dict):
    assert a.keys() == b.keys()
    for k in a: assert torch.equal(a[k], b[k]), f'{k} differs: max |diff| {(a[k].double() - b[k].double()).abs().max()}'

@pytest.mark.parametrize('kind', ['plain', 'moco'])
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, kind):
    run, epochs = tmp_path/'run', 6
    proc = _start('--path', run, '--kind', kind, '--epochs', epochs, '--pause-after', 2)
    _kill_when_paused(proc, run)
    assert proc.returncode == -signal.SIGKILL
    done = max(checkpoints(run))
    assert done == 2, f'killed after {done} epochs, not 2'
    ckpt = torch.load(checkpoints(run)[done], weights_only=True)     # plain torch, no allow-list: no objects inside
    assert ckpt['epoch'] == done

    resumed = _start('--path', run, '--kind', kind, '--epochs', epochs, '--resume', '--out', tmp_path/'resumed.pth')
    out, _ = communicate(resumed, 'the resumed training process')
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


def test_hang_guard_ends_a_hung_child(tmp_path, monkeypatch):
    "The waits above fail only on a child that hangs: FUNDUS_TEST_TIMEOUT (default 3600 s) bounds them, a bad value is refused."
    assert hang_guard.hang_timeout() > 0
    monkeypatch.setenv('FUNDUS_TEST_TIMEOUT', '0.2')
    hung = [sys.executable, '-c', 'import time; time.sleep(600)']
    with pytest.raises(pytest.fail.Exception, match='still ran after 0.2 s'): hang_guard.run(hung, 'the sleeper')
    proc = subprocess.Popen(hung, stdout=subprocess.PIPE, text=True, start_new_session=True)
    with pytest.raises(pytest.fail.Exception, match='ready did not appear in 0.2 s'): wait_for(tmp_path/'ready', proc)
    assert proc.poll() is not None                       # killed, not left running
    monkeypatch.setenv('FUNDUS_TEST_TIMEOUT', 'soon')
    with pytest.raises(ValueError, match="FUNDUS_TEST_TIMEOUT='soon': expected a positive number"): hang_guard.hang_timeout()
