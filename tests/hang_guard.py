"""Hang guards for tests that wait on a child process: how long they wait is FUNDUS_TEST_TIMEOUT seconds (default 3600).

The limit only ends a child that hangs; it is no timing assertion. The children here take seconds to minutes, and
many times that on a busy machine (load 10 on 2 cores), so the default is far beyond any load. Set
FUNDUS_TEST_TIMEOUT lower to give up on a hung child sooner, or higher on a very slow machine."""
import os, signal, subprocess, time
from pathlib import Path
import pytest

DEFAULT_S = 3600.

def hang_timeout() -> float:
    "Seconds a test waits for a child before calling it hung: FUNDUS_TEST_TIMEOUT, else `DEFAULT_S`."
    text = os.environ.get('FUNDUS_TEST_TIMEOUT', '').strip()
    if not text: return DEFAULT_S
    try: value = float(text)
    except ValueError: value = None
    if value is None or not value > 0:
        raise ValueError(f'FUNDUS_TEST_TIMEOUT={text!r}: expected a positive number of seconds')
    return value

def _kill(proc:subprocess.Popen):
    "SIGKILL `proc`, and its process group when it leads one (`start_new_session=True`: torchrun's workers too)."
    try:
        if os.getpgid(proc.pid) == proc.pid: os.killpg(proc.pid, signal.SIGKILL)
        else: proc.kill()
    except ProcessLookupError: pass

def communicate(proc:subprocess.Popen, what:str='the child process') -> tuple:
    "`proc.communicate()` under the hang guard: a child still running after `hang_timeout()` s is killed and the test fails."
    limit = hang_timeout()
    try: return proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        _kill(proc)
        out, err = proc.communicate()
        pytest.fail(f'{what} still ran after {limit:g} s (FUNDUS_TEST_TIMEOUT): it hangs; killed. Output tail:\n'
                    f'{(out or "")[-3000:]}{(err or "")[-3000:]}')

def run(cmd:list, what:str|None=None, **kwargs) -> subprocess.CompletedProcess:
    "`subprocess.run(cmd, capture_output=True, text=True, **kwargs)` under the hang guard, the child in a session of its own."
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs)
    out, err = communicate(proc, what or ' '.join(map(str, cmd[:3])))
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

def wait_for(path:Path, proc:subprocess.Popen, what:str='the child process'):
    "Wait until `path` exists; fail when `proc` exits first, or (hung) after `hang_timeout()` s."
    limit = hang_timeout()
    deadline = time.monotonic() + limit
    while not Path(path).exists():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ''
            pytest.fail(f'{what} ended (rc {proc.returncode}) before {Path(path).name} appeared:\n{(out or "")[-3000:]}')
        if time.monotonic() > deadline:
            _kill(proc); proc.wait()
            pytest.fail(f'{Path(path).name} did not appear in {limit:g} s (FUNDUS_TEST_TIMEOUT): {what} hangs; killed')
        time.sleep(0.02)
