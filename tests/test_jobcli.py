"""The background jobs' shared skeleton (trainers.jobcli) on its own: the job folder's lock and what
it clears, status.json, a failure recorded (or kept out), the common flags, and main()'s exit codes
and signal handling. The three jobs' own tests (test_analyze, test_fit_lens, test_sae_runs) run it
end to end."""
from __future__ import annotations

import json
import os
import signal

import pytest

from trainers import jobcli


class JobError(ValueError):
    pass


def lock_kw(d):
    return dict(error=JobError, busy=f"busy: {d.name}", unwritable="copy it somewhere writable")


def test_lock_clears_leftovers_and_a_stale_stop_but_not_a_fresh_one(tmp_path):
    d = tmp_path / "run" / "job"  # parents made too
    with jobcli.job_lock(d, **lock_kw(d)):
        assert (d / ".lock").is_file()
    (d / ".status.json.x1.tmp").write_text("{")  # a write a kill interrupted
    (d / "STOP").write_text("old")
    jobcli.write_status(d, "stopped", "stopped at 3/9", done=3, total=9)
    with jobcli.job_lock(d, **lock_kw(d)):
        assert not list(d.glob(".*.tmp")) and not (d / "STOP").exists()  # stale: no launcher wrote "starting"
        with pytest.raises(JobError, match="busy: job"):  # a second writer is refused
            with jobcli.job_lock(d, **lock_kw(d)):
                pass
    jobcli.write_status(d, "running", jobcli.STARTING)  # a launcher's, then a Stop click before the child ran
    (d / "STOP").write_text("now")
    with jobcli.job_lock(d, **lock_kw(d)):
        assert (d / "STOP").exists()
        with pytest.raises(jobcli.StopRequested):
            jobcli.check_stop(d, lambda: False)
        jobcli.clear_stop(d)
        jobcli.check_stop(d, lambda: False)  # no STOP, nothing asked: goes on
        with pytest.raises(jobcli.StopRequested):
            jobcli.check_stop(d, lambda: True)


def test_lock_on_a_folder_that_cannot_be_made(tmp_path):
    (tmp_path / "file").write_text("")
    d = tmp_path / "file" / "job"
    with pytest.raises(JobError, match=r"cannot write .*job \(.*\); copy it somewhere writable"):
        with jobcli.job_lock(d, **lock_kw(d)):
            pass


def test_status_and_last_status(tmp_path):
    jobcli.write_status(tmp_path, "running", "step 2/5", step=2, total=5)
    st = json.loads((tmp_path / "status.json").read_text())
    assert st["pid"] == os.getpid() and st["step"] == 2 and st["total"] == 5 and st["message"] == "step 2/5"
    got = jobcli.last_status(tmp_path, "finished", "done", step=5, total=5, eval={"fve": 0.9})
    assert got == {"state": "finished", "step": 5, "total": 5, "eval": {"fve": 0.9}, "message": "done"}
    st = json.loads((tmp_path / "status.json").read_text())
    assert st["pid"] is None and st["state"] == "finished" and st["eval"] == {"fve": 0.9}


def test_failure_recorded_by_message_or_type_and_kept_out():
    written: list[str] = []
    with pytest.raises(JobError):
        with jobcli.failure_recorded(JobError, written.append):
            raise JobError("no corpus here")
    with pytest.raises(KeyError):
        with jobcli.failure_recorded(JobError, written.append):
            raise KeyError("x" * 5000)
    assert written[0] == "no corpus here"
    assert written[1].startswith("KeyError: 'xxx") and len(written[1]) == jobcli.MESSAGE_MAX

    class Refused(JobError):
        pass

    with pytest.raises(Refused):
        with jobcli.failure_recorded(JobError, written.append, keep=(Refused,)):
            raise Refused("settings clash")
    assert len(written) == 2  # a kept-out refusal leaves status.json as it was


def test_common_flags(capsys):
    p = jobcli.job_parser("python -m x", "a job")
    p.add_argument("--windows", type=int)
    args = jobcli.parse_job_args(p, ["--run", "r", "--windows", "3", "--threads", "1", "--fresh"], "start over",
                                 ("windows",))
    assert (args.run, args.root, args.windows, args.threads, args.fresh) == ("r", None, 3, 1, True)
    for bad, flag in [(["--windows", "0"], "--windows"), (["--threads", "0"], "--threads")]:
        p = jobcli.job_parser("python -m x", "a job")
        p.add_argument("--windows", type=int)
        with pytest.raises(SystemExit) as e:
            jobcli.parse_job_args(p, ["--run", "r", *bad], "start over", ("windows",))
        assert e.value.code == 2 and f"{flag} must be at least 1" in capsys.readouterr().err
    p = jobcli.job_parser("python -m x", "a job", path_help="a checkpoint in no run")
    with pytest.raises(SystemExit):  # --run and --path exclude each other, one is needed
        jobcli.parse_job_args(p, ["--run", "r", "--path", "p"], "start over")
    assert "not allowed with argument" in capsys.readouterr().err
    p = jobcli.job_parser("python -m x", "a job", path_help="a checkpoint in no run")
    assert jobcli.parse_job_args(p, ["--path", "p"], "start over").path == "p"


def test_run_job_exit_codes_signals_and_report(capsys):
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    seen: dict = {}

    def job(threads, should_stop, log):
        assert not should_stop()
        signal.raise_signal(signal.SIGTERM)  # handled: asks the job to stop, does not kill
        seen.update(threads=threads, stop=should_stop())
        log("working")
        return {"state": "stopped", "message": "stopped at 1/2", "eval": {"fve": 1.0}}

    assert jobcli.run_job(1, "this step", job, report=lambda st: print(json.dumps(st["eval"]))) == 0
    out, err = capsys.readouterr()
    assert seen == {"threads": 1, "stop": True} and "SIGTERM: stopping after this step" in err
    assert out.splitlines() == ["working", "stopped: stopped at 1/2", '{"fve": 1.0}']
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers  # put back

    def refused(*_):
        raise JobError("no run named 'nope'")

    def bad(*_):
        raise jobcli.BadSettings("--steps must be at least 1")

    assert jobcli.run_job(1, "this step", refused) == 1
    assert capsys.readouterr().err == "error: no run named 'nope'\n"
    assert jobcli.run_job(1, "this step", bad) == 2
    assert capsys.readouterr().err == "error: --steps must be at least 1\n"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
