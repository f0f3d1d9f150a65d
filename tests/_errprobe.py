import torch, pyoptim, sys
from pyoptim import _ops
H = dict(lr=1e-3, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False, decoupled=False)
def call(dev, steps, bad_shape=False):
    p = [torch.zeros(3, device=dev), torch.zeros(3, device=dev)]
    g = [torch.zeros(3, device=dev), torch.zeros(4 if bad_shape else 3, device=dev)]
    try:
        _ops.adam_(p, g, [torch.zeros(3, device=dev)]*1 + [torch.zeros(3, device=dev)], [torch.zeros(3, device=dev), torch.zeros(3, device=dev)], [], steps, **H)
    except Exception as e:
        print(dev, type(e).__name__, str(e).splitlines()[0], flush=True)
which = sys.argv[1]
if which == "cpu": call("cpu", [torch.tensor(0.), torch.tensor(0.)], bad_shape=True)
if which == "cuda_shape": call("cuda", [torch.tensor(0.), torch.tensor(0.)], bad_shape=True)
if which == "cuda_step": call("cuda", [torch.tensor(0., device="cuda"), torch.tensor(0., device="cuda", dtype=torch.half)])
