"""A stand-in SGLang worker that really holds a model: fake_sglang's routes, plus an HF model the
broadcast weights are applied to (for tests/integration/test_weight_sync_tp2.py).

    python -m tests.support.hf_weight_receiver --port P [--max-lifetime-s 150]

It plays the server's side of the NCCL transport (weight_sync/nccl.py) the way SGLang 0.5.23 does:
  * /init_weights_update_group joins the trainer's group at `rank_offset` with SGLang's own
    init_custom_process_group read from the wheel (`pip install --no-deps sglang==0.5.23`), or,
    where the wheel is absent (CI installs only `.[test]`), with the trainer's `join_group`,
    which follows the same rendezvous convention (tcp://address:port, store prefix group_name);
  * /update_weights_from_distributed (inside begin/end_weight_update) receives one broadcast from
    rank 0 per announced tensor, in the order of `names`, with the announced dtype and shape, and
    then loads the bucket into the model (InProcessEngine.update_weights: every name and shape is
    checked, a tied lm_head is accepted or left out). A bucket that does not fit the model is
    answered with success=false and its reason;
  * POST /_receiver/logprobs {input_ids: [[..]], labels: [[..]], temperature} answers
    {"logprobs": [[log_softmax(logits / T)[label]]], "weight_version", "param_names",
    "applied", "joined_with"}: what the served model gives, to compare with the trainer;
  * /destroy_weights_update_group really destroys the group (as SGLang does), so a later
    /init_weights_update_group may form one under the same name;
  * POST /_receiver/reset {overrides: ["model.qkv_bias=true", ...], seed} makes it a fresh server
    (no group, no history, version "default") of a new model: the transformers model
    rollout.inprocess.build_hf_model builds for that config (Qwen2 with QKV bias, Llama without),
    seeded, so it starts from weights unlike the trainer's. One process then serves several test
    cases in turn (each python + torch + transformers start costs seconds of CPU). Until the
    first reset there is no model, and weight updates are refused.

Loopback only; the process exits by itself after --max-lifetime-s.
"""

from __future__ import annotations

import threading

import torch
import torch.distributed as dist

from tests.support import fake_sglang, sglang_contract

LOGPROBS_ROUTE = "/_receiver/logprobs"
RESET_ROUTE = "/_receiver/reset"


class _Answered(Exception):
    """The handler already sent its (error) answer; stop handling the request."""


class ReceiverHandler(fake_sglang.Handler):
    engine = None  # rollout.inprocess.InProcessEngine of the current model, set by /_receiver/reset
    model_lock = threading.Lock()
    applied = []  # [names] of each bucket loaded into the model, in order
    joined_with = None  # which rendezvous code joined the group

    def do_POST(self):
        path = self.path.split("?")[0]
        if path == LOGPROBS_ROUTE:
            return self._logprobs(self._body())
        if path == RESET_ROUTE:
            return self._reset(self._body())
        if path == "/init_weights_update_group":
            return self._init_group()
        if path == "/destroy_weights_update_group":
            return self._destroy_group(self._body())
        return super().do_POST()

    do_PUT = do_POST

    def _init_group(self):
        s = self.state
        body = self._body()
        with s.lock:
            s.requests.append(["/init_weights_update_group", body])
        missing = [k for k in ("master_address", "master_port", "rank_offset", "world_size") if k not in body]
        if missing:
            return self._fail(f"missing fields {missing}")
        group_name = body.get("group_name", "weight_update_group")
        backend = body.get("backend", "nccl")
        if sglang_contract.available():  # what a real server runs on this route
            pg = sglang_contract.sglang_init_custom_process_group()(
                backend=backend,
                init_method=f"tcp://{body['master_address']}:{body['master_port']}",
                world_size=body["world_size"],
                rank=body["rank_offset"],
                group_name=group_name,
            )
            joined_with = "sglang.init_custom_process_group"
        else:
            from chord_megatron.weight_sync.nccl import join_group

            pg = join_group(
                body["master_address"],
                body["master_port"],
                body["world_size"],
                body["rank_offset"],
                group_name=group_name,
                backend=backend,
                timeout_s=60,
            )
            joined_with = "chord_megatron.weight_sync.nccl.join_group"
        with s.lock:
            s.group_pg, s.group = pg, group_name
            type(self).joined_with = joined_with
        return self._ok("Succeeded to initialize custom process group.")

    def _destroy_group(self, body):
        s = self.state
        with s.lock:
            s.requests.append(["/destroy_weights_update_group", body])
            pg, s.group_pg, s.group = s.group_pg, None, None
        if pg is not None:
            dist.destroy_process_group(pg)
        return self._ok("Succeeded to destroy custom process group.")

    def _reset(self, body):
        from chord_megatron.config import load_config
        from chord_megatron.rollout.inprocess import InProcessEngine, build_hf_model

        cls = type(self)
        with self.state.lock:
            if self.state.group_pg is not None:
                return self._fail("reset: the weights update group is still open (destroy it first)")
        cfg = load_config(None, list(body.get("overrides", [])))
        with self.model_lock:
            cls.engine = InProcessEngine(build_hf_model(cfg.model, seed=int(body.get("seed", 12345))))
            cls.applied = []
            cls.joined_with = None
            cls.state = fake_sglang.State(self.state.args)
        model = cls.engine.model
        return self._send(
            200,
            {
                "success": True,
                "model": type(model).__name__,
                "tie_word_embeddings": bool(model.config.tie_word_embeddings),
            },
        )

    def _receive(self, body):
        """The announced tensors, by broadcast from rank 0 in the order of `names`; then load
        them into the model as one bucket (as SGLang's model.load_weights does per request)."""
        s = self.state
        if self.engine is None:
            self._fail("no model: POST /_receiver/reset first")
            raise _Answered()
        bucket = []
        for name, dtype, shape in zip(body["names"], body["dtypes"], body["shapes"]):
            t = torch.empty(shape, dtype=getattr(torch, dtype))
            dist.broadcast(t, src=0, group=s.group_pg)
            bucket.append((name, t))
            with s.lock:
                s.received[name] = [dtype, list(shape), float(t.double().sum()), t.flatten()[:4].tolist()]
        try:
            with self.model_lock:
                self.engine.update_weights(bucket, body.get("weight_version") or "partial")
                self.applied.append([n for n, _ in bucket])
        except Exception as e:  # a bucket the model cannot take: refuse it as SGLang would
            self._fail(f"loading the received tensors failed: {type(e).__name__}: {e}")
            raise _Answered() from e

    def _logprobs(self, body):
        if self.engine is None:
            return self._fail("no model: POST /_receiver/reset first")
        ids = torch.tensor(body["input_ids"], dtype=torch.long)
        labels = torch.tensor(body["labels"], dtype=torch.long)
        temperature = float(body.get("temperature", 1.0))
        with self.model_lock, torch.no_grad():
            logits = self.engine.model(input_ids=ids).logits.float()
            logp = torch.log_softmax(logits / temperature, dim=-1).gather(-1, labels[..., None]).squeeze(-1)
            names = sorted(n for n, _ in self.engine.model.named_parameters())
        with self.state.lock:
            version = self.state.weight_version
        return self._send(
            200,
            {
                "logprobs": logp.tolist(),
                "weight_version": version,
                "param_names": names,
                "applied": self.applied,
                "joined_with": self.joined_with,
            },
        )

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except _Answered:
            self.close_connection = True


def main(argv=None):
    """fake_sglang's command line, serving ReceiverHandler."""
    torch.set_num_threads(1)
    import transformers  # noqa: F401 - imported before serving, so the first reset is quick

    fake_sglang.serve(argv, handler=ReceiverHandler)


if __name__ == "__main__":
    main()
