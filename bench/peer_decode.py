"""Peer for bench_decode.c's beam_search_step: one step of Hugging Face
transformers' beam search written in torch (log_softmax, add the running
beam scores, top 2*beam over beam x vocab per item, split into beam and
token indices, gather). The model is excluded, as in the C benchmark.
Same kernel and shape strings."""
import torch

import peerlib

BATCH, WIDTH, VOCAB = 8, 4, 32000


def main():
    peerlib.setup()
    logits = torch.rand(BATCH * WIDTH, VOCAB) * 8 - 4
    beam_scores = torch.zeros(BATCH * WIDTH)

    def step():
        logprobs = torch.log_softmax(logits, dim=-1) + beam_scores[:, None]
        flat = logprobs.view(BATCH, WIDTH * VOCAB)
        scores, idx = torch.topk(flat, 2 * WIDTH, dim=1, largest=True, sorted=True)
        beam_idx = torch.div(idx, VOCAB, rounding_mode="floor")
        tokens = idx % VOCAB
        return scores, beam_idx, tokens

    shape = "b%d w%d v%d" % (BATCH, WIDTH, VOCAB)
    peerlib.record("beam_search_step", shape, step, reps=21)


if __name__ == "__main__":
    main()
