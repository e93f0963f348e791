"""An LSTM language model on random tokens, trained with bfloat16 autocast on its decoder, a gradient scaler
and ``clip_grad_value_``, the loop written as a function.

Broken: ``clip_grad_value_(..., 0.5)`` runs on gradients still multiplied by the scaler's
scale, so nearly every element is clipped to 0.5 and the gradient's direction is lost.
Fix: ``scaler.unscale_(optimizer)`` before the clip.
"""

import torch
from torch import nn

torch.manual_seed(0)

vocab, width = 50, 32
embedding = nn.Embedding(vocab, width)
lstm = nn.LSTM(width, width, batch_first=True)
decoder = nn.Linear(width, vocab)
params = [*embedding.parameters(), *lstm.parameters(), *decoder.parameters()]
optimizer = torch.optim.SGD(params, lr=0.5)
scaler = torch.amp.GradScaler("cpu")


def train_step(tokens):
    hidden, _ = lstm(embedding(tokens[:, :-1]))  # the CPU has no bfloat16 LSTM: autocast the decoder only
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = decoder(hidden).float()
    loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
    optimizer.zero_grad()
    scaler.scale(loss).backward()
    nn.utils.clip_grad_value_(params, 0.5)  # doctor: unscaled-clip
    scaler.step(optimizer)
    scaler.update()
    return loss.item()


for _ in range(4):
    last = train_step(torch.randint(0, vocab, (8, 21)))
print(f"loss {last:.3f}")
