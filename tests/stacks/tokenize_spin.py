def encode(text):
    out = []
    for ch in text:
        out.append(ord(ch) * 31 % 50257)
    return out
def collate(batch):
    return [encode(t) for t in batch]
while True:
    collate(["hello world " * 50] * 8)
