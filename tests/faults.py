"""A small fault-injection harness for tests/test_faults.py: run a function in a forked child that SIGKILLs itself at
the k-th filesystem operation (a file opened for writing, a rename, an exchange, an unlink, a rmdir) once it is *armed*,
i.e. once a chosen function has been entered. Forking keeps every kill cheap (the parent has imported torch and the
package already); the tests set OMP_NUM_THREADS=1, so no thread is mid-flight at the fork."""
import builtins, os, shutil, signal, traceback
from contextlib import contextmanager

OPS = ('replace', 'rename', 'unlink', 'remove', 'rmdir')


def _install(k, arm_module, arm_name):
    "In the child: count filesystem operations after `arm_module.arm_name` is entered; SIGKILL at the k-th."
    import videorecipes.videoio as vio
    state = dict(armed=arm_module is None, n=0)
    def tick():
        if not state['armed']: return
        state['n'] += 1
        if state['n'] == k: os.kill(os.getpid(), signal.SIGKILL)
    def wrap(obj, name):
        f = getattr(obj, name)
        def g(*a, **kw):
            tick(); return f(*a, **kw)
        setattr(obj, name, g)
    for name in OPS: wrap(os, name)
    wrap(vio, 'exchange_paths')
    real_open = builtins.open
    def opener(file, mode='r', *a, **kw):
        if any(c in mode for c in 'wax'): tick()
        return real_open(file, mode, *a, **kw)
    builtins.open = opener
    if arm_module is not None:
        target = getattr(arm_module, arm_name)
        def armed(*a, **kw):
            state['armed'] = True; return target(*a, **kw)
        setattr(arm_module, arm_name, armed)


def run_in_child(fn, k=None, arm=(None, None)):
    "Run `fn()` in a forked child (killed at the k-th operation after `arm` = (module, function name) is entered); 'killed', 'ok' or 'failed'."
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if k is not None: _install(k, *arm)
            fn(); code = 0
        except BaseException: traceback.print_exc()
        finally: os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status): return 'killed'
    return 'ok' if os.WEXITSTATUS(status) == 0 else 'failed'


def sweep(fn, arm, check, max_points=60):
    "Kill `fn` at operation 1, 2, ... after `arm` until it completes; after each kill call `check(k)`. Returns the number of points."
    for k in range(1, max_points + 1):
        r = run_in_child(fn, k, arm)
        check(k, r)
        if r == 'ok': return k
    raise AssertionError(f"still killed after {max_points} operations: raise max_points")
