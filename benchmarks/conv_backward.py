"""How fast the CPU's convolution kernels run fastnet's layers, forward and each half of backward.

    python benchmarks/conv_backward.py [--width 0.75] [--batch-size 512] [--repeats 5]

For every 3x3 convolution of fastnet at the given width, times (bf16, channels-last, as training
runs it) the forward pass, the input gradient and the weight gradient, each on its own through
`aten.convolution_backward`, and prints their GFLOP/s. For comparison it also times the weight
gradient as one matmul over nine shifted copies of the input (im2col written out), the way a custom
backward could compute it. Random data: the kernels do not care.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from cifarapp.models import FastNet


def conv_shapes(width: float) -> list[tuple[int, int, int]]:
    """(in channels, out channels, input side) of each 3x3 convolution of fastnet."""
    model = FastNet(width=width)
    shapes, side = [], 31  # the 2x2 whitening stem turns 32x32 into 31x31
    for group in model.groups:
        shapes.append((group.conv1.in_channels, group.conv1.out_channels, side))
        side //= 2
        shapes.append((group.conv2.in_channels, group.conv2.out_channels, side))
    return shapes


def weight_grad_as_matmul(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The 3x3, padding-1 convolution's weight gradient [out, in, 3, 3] as grad^T @ im2col(x)."""
    batch, cin, side, _ = x.shape
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # NHWC, zero border
    columns = torch.cat([padded[:, ky:ky + side, kx:kx + side] for ky in range(3) for kx in range(3)], dim=3)
    dw = grad.permute(0, 2, 3, 1).reshape(-1, grad.shape[1]).t() @ columns.reshape(-1, 9 * cin)
    return dw.view(-1, 3, 3, cin).permute(0, 3, 1, 2)


def timed_ms(fn, repeats: int) -> float:
    fn()
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, default=0.75)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    cl = torch.channels_last
    print(f"fastnet width {args.width}, batch {args.batch_size}, bf16 channels-last, "
          f"{torch.get_num_threads()} threads ({time.strftime('%Y-%m-%d %H:%M')})")
    print(f"{'conv':<22} {'forward ms':>10} {'grad input ms':>14} {'grad weight ms':>15} "
          f"{'fwd GFLOP/s':>12} {'grad weight GFLOP/s':>20} {'grad weight as matmul ms':>25}")
    totals = [0.0, 0.0, 0.0, 0.0]
    for cin, cout, side in conv_shapes(args.width):
        x = torch.randn(args.batch_size, cin, side, side).to(torch.bfloat16).contiguous(memory_format=cl)
        w = torch.randn(cout, cin, 3, 3).to(torch.bfloat16).contiguous(memory_format=cl)
        grad = torch.randn(args.batch_size, cout, side, side).to(torch.bfloat16).contiguous(memory_format=cl)

        def backward(mask: tuple[bool, bool, bool], grad=grad, x=x, w=w):
            return lambda: torch.ops.aten.convolution_backward(
                grad, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

        reference = backward((False, True, False))()[1].float()
        error = (weight_grad_as_matmul(grad, x).float() - reference).norm() / reference.norm()
        assert error < 1e-2, f"the matmul weight gradient disagrees with aten's (relative error {error:.2g})"
        times = (timed_ms(lambda x=x, w=w: F.conv2d(x, w, padding=1), args.repeats),
                 timed_ms(backward((True, False, False)), args.repeats),
                 timed_ms(backward((False, True, False)), args.repeats),
                 timed_ms(lambda grad=grad, x=x: weight_grad_as_matmul(grad, x), args.repeats))
        totals = [t + s for t, s in zip(totals, times)]
        gflop = 2 * args.batch_size * side * side * cin * cout * 9 / 1e9
        print(f"{f'{cin}->{cout} at {side}x{side}':<22} {times[0]:>10.1f} {times[1]:>14.1f} {times[2]:>15.1f} "
              f"{gflop / times[0] * 1000:>12.0f} {gflop / times[2] * 1000:>20.0f} {times[3]:>25.1f}")
    print(f"{'all convolutions':<22} {totals[0]:>10.1f} {totals[1]:>14.1f} {totals[2]:>15.1f} "
          f"{'':>12} {'':>20} {totals[3]:>25.1f}")


if __name__ == "__main__":
    main()
