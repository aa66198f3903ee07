"""A GGUF model (llama.cpp through llama-cpp-python) behind Triton's Python backend, decoupled:
one response per generated token, the last one flagged TRITONSERVER_RESPONSE_COMPLETE_FINAL.

Tensor names follow TensorRT-LLM's ensemble and vLLM's Triton backend, so a client speaks to this
CPU model and to a GPU deployment alike (deploy/triton/README.md):

inputs   text_input (BYTES), max_tokens (INT32), stream (BOOL, accepted; responses always
         stream), optional temperature, top_p (FP32), top_k (INT32), repetition_penalty (FP32),
         random_seed (UINT64), stop_words (BYTES, any count)
outputs  on every response: text_output (BYTES, the text since the previous response; may be
         empty while a UTF-8 character or a possible stop word is held back), num_input_tokens (the
         prompt's tokens) and num_output_tokens (the tokens generated since the previous response),
         UINT32 with vLLM's backend's names and meaning; on the final response also
         finish_reason (BYTES: stop | length | cancelled)

The prompt is tokenized with special tokens parsed (as TensorRT-LLM's preprocessing and vLLM do):
callers send the chat template's markup in text_input. Settings (parameters in config.pbtxt, an
environment variable overrides): gguf_path / LLMESH_TRITON_GGUF, context_length, n_threads,
token_counts / LLMESH_TRITON_TOKEN_COUNTS ("false": no num_input_tokens/num_output_tokens, as
TensorRT-LLM's ensemble; for tests of the client's own count).
With dynamic batching (max_batch_size > 0) every tensor has a leading batch dimension of 1 per
request; the requests of one execute() call are decoded one after another on the single
llama.cpp context (llama-cpp-python's Llama decodes one sequence per context).
"""

import codecs
import json
import os
import random
import threading

import llama_cpp
import numpy as np
import triton_python_backend_utils as pb_utils


def _optional(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    value = tensor.as_numpy().reshape(-1)
    return value[0].item() if value.size else default


def _strings(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return []
    return [v.decode() if isinstance(v, bytes) else str(v) for v in tensor.as_numpy().reshape(-1)]


class _StopWords:
    """Holds back text that may begin a stop word; cuts the text at the first stop word."""

    def __init__(self, stop_words):
        self.words = [w for w in stop_words if w]
        self.pending = ""
        self.stopped = False

    def feed(self, text):
        self.pending += text
        cuts = [i for i in (self.pending.find(w) for w in self.words) if i >= 0]
        if cuts:
            self.stopped = True
            out, self.pending = self.pending[: min(cuts)], ""
            return out
        keep = 0
        for word in self.words:
            for n in range(min(len(word) - 1, len(self.pending)), keep, -1):
                if self.pending.endswith(word[:n]):
                    keep = n
                    break
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep :]
        return out


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.batched = config.get("max_batch_size", 0) > 0
        path = os.environ.get("LLMESH_TRITON_GGUF") or parameters.get("gguf_path", "")
        if not path or not os.path.exists(path):
            raise pb_utils.TritonModelException(
                f"GGUF file not found ({path!r}): set the gguf_path parameter or LLMESH_TRITON_GGUF"
            )
        self.context_length = int(parameters.get("context_length", "2048"))
        threads = int(parameters.get("n_threads", "1"))
        counts = os.environ.get("LLMESH_TRITON_TOKEN_COUNTS") or parameters.get("token_counts", "true")
        self.token_counts = counts.strip().lower() not in ("0", "false", "no", "off")
        self.llm = llama_cpp.Llama(
            model_path=path, n_ctx=self.context_length, n_threads=threads, n_threads_batch=threads, verbose=False
        )
        vocab = self.llm._model.vocab
        self.is_eog = lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token))
        self.lock = threading.Lock()
        # Requests and tokens this instance has served, for tests and operators (logged at finalize).
        self.served = {"requests": 0, "tokens": 0, "cancelled": 0}

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                self._generate(request, sender)
            except Exception as exc:  # reported to the caller, the instance keeps serving
                sender.send(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
        return None

    def _response(self, text, n_in, n_out, finish=None):
        shape = (1, 1) if self.batched else (1,)
        tensors = [pb_utils.Tensor("text_output", np.array([text.encode()], dtype=np.object_).reshape(shape))]
        if self.token_counts:
            tensors += [
                pb_utils.Tensor("num_input_tokens", np.array([n_in], dtype=np.uint32).reshape(shape)),
                pb_utils.Tensor("num_output_tokens", np.array([n_out], dtype=np.uint32).reshape(shape)),
            ]
        if finish is not None:
            tensors.append(
                pb_utils.Tensor("finish_reason", np.array([finish.encode()], dtype=np.object_).reshape(shape))
            )
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _generate(self, request, sender):
        prompt = _strings(request, "text_input")
        if len(prompt) != 1:
            raise ValueError("text_input must hold one prompt")
        max_tokens = int(_optional(request, "max_tokens", 16))
        with self.lock:
            tokens = self.llm.tokenize(prompt[0].encode(), add_bos=False, special=True)
        if max_tokens < 1 or len(tokens) + max_tokens > self.context_length:
            raise ValueError(
                f"INVALID_ARGUMENT: the prompt takes {len(tokens)} tokens and max_tokens is {max_tokens}: "
                f"together over the {self.context_length}-token context"
            )
        seed = _optional(request, "random_seed", None)
        self.llm.set_seed(int(seed) % 0xFFFFFFFF if seed is not None else random.randrange(0xFFFFFFFF))
        stop = _StopWords(_strings(request, "stop_words"))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        generator = self.llm.generate(
            tokens,
            temp=float(_optional(request, "temperature", 0.8)),
            top_p=float(_optional(request, "top_p", 0.95)),
            top_k=int(_optional(request, "top_k", 40)),
            repeat_penalty=float(_optional(request, "repetition_penalty", 1.0)),
        )
        self.served["requests"] += 1
        produced, finish, unsent = 0, "length", ""
        reported = 0  # tokens counted in the responses sent
        try:
            for token in generator:
                # A caller that went away (stream cancelled) stops the work between tokens.
                if sender.is_cancelled():
                    finish = "cancelled"
                    break
                if self.is_eog(token):
                    finish = "stop"
                    break
                produced += 1
                self.served["tokens"] += 1
                unsent = stop.feed(decoder.decode(self.llm.detokenize([token])))
                if stop.stopped:
                    finish = "stop"
                    break
                if produced >= max_tokens:
                    break
                sender.send(self._response(unsent, len(tokens), produced - reported))
                unsent, reported = "", produced
        finally:
            generator.close()
            # The generation's sampler chain (an n_vocab-sized buffer, 3 MiB for Gemma 3) would
            # otherwise wait on the Llama object, then for Python's cyclic collector (docs/adr/0040).
            sampler, self.llm._sampler = self.llm._sampler, None
            if sampler is not None:
                sampler.close()
        if finish == "cancelled":
            self.served["cancelled"] += 1
            pb_utils.Logger.log_info(f"generation cancelled after {produced} tokens")
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        if not stop.stopped:  # held-back text that turned out not to be a stop word
            unsent += stop.pending + decoder.decode(b"", final=True)
        # The last piece of text rides on the final response with the finish reason.
        sender.send(
            self._response(unsent, len(tokens), produced - reported, finish),
            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
        )

    def finalize(self):
        pb_utils.Logger.log_info(f"gemma served {self.served}")
        self.llm.close()
