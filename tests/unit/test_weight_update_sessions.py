"""Weight-update sessions against fake SGLang workers that keep SGLang 0.5.23's one-session rule
(a begin while a session is open is refused with "a weight-update session is already open"):
a refused begin on one worker ends the sessions opened on the others, a session left open by an
earlier run is ended before the next begin, and a lost /end_weight_update answer is retried."""

import json
import urllib.error
import urllib.request

import pytest
import torch

from chord_megatron.rollout.sglang.client import SGLangClient, SGLangError
from chord_megatron.rollout.sglang.engine import SGLangEngine
from chord_megatron.weight_sync.tensor import TensorSync
from tests.support import fake_sglang
from tests.support.fake_sglang import stats

NAMED = [("model.norm.weight", torch.ones(8))]


def post(worker, path):
    req = urllib.request.Request(worker.url + path, data=b"{}", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def engine_for(workers):
    urls = [w.url for w in workers]
    return SGLangEngine(SGLangClient(urls, urls, backoff_s=0.05), weight_sync=TensorSync())


def paths(worker):
    return [p for p, _ in stats(worker)["requests"]]


def test_fake_keeps_sglangs_one_session_rule(tmp_path):
    """The fake refuses a second begin the way SGLang does, or the tests below prove nothing."""
    with fake_sglang.running(1, tmp_path) as (w,):
        assert post(w, "/begin_weight_update") == (200, {"success": True, "message": "Success"})
        status, answer = post(w, "/begin_weight_update")
        assert status == 400 and "a weight-update session is already open" in answer["message"]


def test_refused_begin_ends_the_sessions_opened_on_the_other_workers(tmp_path):
    with fake_sglang.running(3, tmp_path, {1: ["--refuse-begin"]}) as ws, engine_for(ws) as eng:
        with pytest.raises(SGLangError, match=rf"{ws[1].url}/begin_weight_update failed: refused"):
            eng.update_weights(NAMED, "1")
        for w in ws:
            assert not stats(w)["session_open"], w.url
        assert paths(ws[0]) == ["/begin_weight_update", "/end_weight_update"]
        assert eng.weight_version is None


def test_stale_session_of_an_earlier_run_is_ended_before_the_next_begin(tmp_path):
    with fake_sglang.running(2, tmp_path) as ws:
        post(ws[0], "/begin_weight_update")  # a crashed run (or the run a --resume continues) left it open
        with engine_for(ws) as eng:
            eng.update_weights(NAMED, "4")
            assert eng.served_versions() == {ws[0].url: "4", ws[1].url: "4"}
        # The stale begin, then ours (refused: a session is already open), its end, ours again.
        assert paths(ws[0]) == [
            "/begin_weight_update",
            "/begin_weight_update",
            "/end_weight_update",
            "/begin_weight_update",
            "/update_weights_from_tensor",
            "/end_weight_update",
        ]
        assert paths(ws[1]) == ["/begin_weight_update", "/update_weights_from_tensor", "/end_weight_update"]
        assert not any(stats(w)["session_open"] for w in ws)


def test_end_is_retried_when_its_answer_is_lost(tmp_path):
    """The server ends the session but the answer never arrives: the retry finds no session open,
    which means the first attempt worked, and the sync succeeds; the next sync begins normally."""
    with fake_sglang.running(1, tmp_path, {0: ["--drop-end-answers", "1"]}) as (w,):
        with engine_for([w]) as eng:
            eng.update_weights(NAMED, "2")
            eng.update_weights(NAMED, "3")
            assert eng.served_versions() == {w.url: "3"}
        p = paths(w)
        assert p.count("/end_weight_update") == 3 and p.count("/begin_weight_update") == 2
        assert not stats(w)["session_open"]
