import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repro.models.base import MultiExitNet
from repro.models.msdnet import (MSDNet, msdnet_cifar_5exit, msdnet_cifar_7exit,
                                 msdnet_cifar_anytime, msdnet_cifar_small, msdnet_imagenet)
from repro.nn import grad_rescale


@pytest.fixture(autouse=True)
def _one_thread():
    # small CPU forwards: threads only contend with other processes
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_grad_rescale():
    x = torch.randn(5, requires_grad=True)
    y = grad_rescale(x, 0.25)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full((5,), 0.25))


@pytest.mark.parametrize("factory,exits,classes", [
    (msdnet_cifar_7exit, 7, 100), (msdnet_cifar_5exit, 5, 100),
    (msdnet_cifar_anytime, 7, 10), (msdnet_cifar_small, 4, 10)])
def test_cifar_shapes(factory, exits, classes):
    net = factory(num_classes=classes)
    assert isinstance(net, MultiExitNet) and net.num_exits == exits
    out = net(torch.randn(2, 3, 32, 32))
    assert len(out) == exits
    assert all(o.shape == (2, classes) for o in out)


def test_one_channel_input_and_overrides():
    net = msdnet_cifar_small(num_classes=7, in_channels=1, nBlocks=2, nChannels=4)
    assert net.cfg.nChannels == 4 and net.num_exits == 2
    out = net(torch.randn(3, 1, 28, 28))
    assert [o.shape for o in out] == [(3, 7)] * 2
    with pytest.raises(TypeError):
        msdnet_cifar_small(not_an_option=1)


def test_imagenet_shapes_small_classes():
    net = msdnet_imagenet(num_classes=5).eval()
    with torch.no_grad():
        out = net.forward_until(torch.randn(1, 3, 224, 224), 1)
    assert len(out) == 2 and out[0].shape == (1, 5)


def test_prune_min_runs():
    net = msdnet_cifar_small(prune="min")
    assert len(net(torch.randn(2, 3, 32, 32))) == net.num_exits


def test_forward_until_matches_forward():
    torch.manual_seed(0)
    net = msdnet_cifar_small(isc=True).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        full = net(x)
        for i in range(net.num_exits):
            part = net.forward_until(x, i)
            assert len(part) == i + 1
            for a, b in zip(part, full):
                assert torch.allclose(a, b, atol=1e-6)


def _run_states(net, x):
    states, logits, state, prev = [], [], x, None
    for i in range(net.num_exits):
        state = net.stage(i, state)
        states.append(state[-1])  # coarsest-scale output of block i, before any rescale
        prev = net.head(i, state, prev)
        logits.append(prev)
    return states, logits


def test_gradient_equilibrium_averages_gradients():
    torch.manual_seed(0)
    net = msdnet_cifar_small(num_classes=5, nChannels=4, growthRate=4, head_channels=8).double()
    k = net.num_exits
    x = torch.randn(4, 3, 32, 32, dtype=torch.double)
    y = torch.randint(0, 5, (4,))

    net.gradient_equilibrium = True
    states, logits = _run_states(net, x)
    loss = sum(F.cross_entropy(z, y) for z in logits)
    ge = torch.autograd.grad(loss, states)

    net.gradient_equilibrium = False
    states, logits = _run_states(net, x)
    ces = [F.cross_entropy(z, y) for z in logits]
    plain = torch.autograd.grad(sum(ces), states, retain_graph=True)
    for i in range(k):
        per_loss = [torch.autograd.grad(ces[j], states[i], retain_graph=True)[0] for j in range(i, k)]
        ref = torch.stack(per_loss).mean(0)
        assert ref.abs().max() > 0
        assert torch.allclose(ge[i], ref, rtol=1e-8, atol=1e-12), i
    # non-vacuous: without GE block 0 gets the sum, not the average
    assert not torch.allclose(plain[0], ge[0])
    assert torch.allclose(plain[k - 1], ge[k - 1])


@pytest.mark.parametrize("detach", [True, False])
def test_isc_detach(detach):
    torch.manual_seed(0)
    net = msdnet_cifar_small(num_classes=6, isc=True, isc_detach=detach)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 6, (4,))
    logits = net.forward_until(x, 1)
    loss = F.cross_entropy(logits[1], y)
    w = net.classifiers[0].weight
    (g,) = torch.autograd.grad(loss, [w], allow_unused=True)
    if detach:
        assert g is None or g.abs().max() == 0
    else:
        assert g is not None and g.abs().max() > 0
    # the ISC path itself is trained either way
    (g_isc,) = torch.autograd.grad(F.cross_entropy(net.forward_until(x, 1)[1], y),
                                   [net.isc_embed[0][0].weight])
    assert g_isc.abs().max() > 0


def _ids(params):
    return {id(p) for p in params}


def test_final_layer_parameters_isc():
    net = msdnet_cifar_small(isc=True)
    want = list(net.classifiers[0].parameters())
    for i in range(net.num_exits - 1):
        want += list(net.isc_embed[i].parameters()) + list(net.isc_classifiers[i].parameters())
    got = net.final_layer_parameters()
    assert len(got) == len(want) and _ids(got) == _ids(want)
    frozen = _ids(p for m in net.frozen_modules() for p in m.parameters())
    assert not frozen & _ids(got)
    unused = _ids(p for c in net.classifiers[1:] for p in c.parameters())
    assert frozen | _ids(got) | unused == _ids(net.parameters())
    # the final layers are the Linear classifiers and the ISC modules only
    mods = net.final_layer_modules()
    assert all(isinstance(m, (nn.Linear, nn.Sequential)) for m in mods)


def test_final_layer_parameters_plain():
    net = msdnet_cifar_small()
    got = net.final_layer_parameters()
    assert _ids(got) == _ids(net.classifiers.parameters())
    frozen = _ids(p for m in net.frozen_modules() for p in m.parameters())
    assert frozen | _ids(got) == _ids(net.parameters()) and not frozen & _ids(got)
    assert all(isinstance(c, nn.Linear) for c in net.classifiers)
    assert all(not isinstance(m, nn.Linear) for h in net.head_features for m in h.modules())


def test_msdnet_is_constructible_directly():
    net = MSDNet(nBlocks=2, nChannels=4, growthRate=2, num_classes=3, head_channels=8)
    assert len(net(torch.randn(1, 3, 32, 32))) == 2


# the exits' pooled feature widths the authors' IMTA code hard-codes for ImageNet (logits_channels)
AUTHORS_IMAGENET_WIDTHS = {4: [384, 384, 352, 304, 560], 6: [512, 544, 496, 880, 792], 7: [576, 640, 608, 528, 976]}


@pytest.mark.parametrize("step", [4, 6, 7])
def test_imagenet_family_widths_and_isc_width(step):
    """Steps 4/6/7 with base = step give the authors' feature widths; ISC embeds exit i-1's
    logits at exit i's own width and classifies the 2*w_i concatenation."""
    C = 1000
    net = msdnet_imagenet(num_classes=C, isc=True, **({} if step == 4 else {"step": step, "base": step}))
    w = AUTHORS_IMAGENET_WIDTHS[step]
    assert net.head_dims == w
    assert [e[0].out_features for e in net.isc_embed] == w[1:]
    assert [c.in_features for c in net.isc_classifiers] == [2 * x for x in w[1:]]
    # the authors' final layers: Linear(w1, C); per later exit Linear(C, w)+BN(w) and Linear(2w, C)
    want = (w[0] * C + C) + sum((C * x + x) + 2 * x + (2 * x * C + C) for x in w[1:])
    assert sum(p.numel() for p in net.final_layer_parameters()) == want


def test_cifar_isc_width_is_128_at_paper_size():
    net = msdnet_cifar_7exit(isc=True)
    assert [e[0].out_features for e in net.isc_embed] == [128] * 6
    assert [c.in_features for c in net.isc_classifiers] == [256] * 6


def test_imagenet_stem_conv_keeps_its_bias():
    net = msdnet_imagenet(num_classes=5)
    first = net.blocks[0].layers[0].layers[0]
    conv = first[0]
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (7, 7) and conv.bias is not None
    assert sum(p.numel() for p in first.parameters()) == 3 * 32 * 7 * 7 + 32 + 2 * 32
    # the only conv with a bias
    biased = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
    assert biased == [conv]
    cifar = msdnet_cifar_small()
    assert all(m.bias is None for m in cifar.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("isc", [True, False])
def test_reset_final_layers(isc):
    torch.manual_seed(0)
    net = msdnet_cifar_small(isc=isc)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.reset_final_layers()
    final = {id(p) for p in net.final_layer_parameters()}
    for name, p in net.named_parameters():
        if id(p) in final:
            assert not torch.equal(p, before[name] + 1.0), name
            if name.endswith("bias") and "isc_embed" not in name:
                assert torch.equal(p, torch.zeros_like(p)), name  # Linear biases start at 0
        else:
            assert torch.equal(p, before[name] + 1.0), name  # nothing else is touched


@pytest.mark.parametrize("n,depth", [(4, 10), (5, 15), (6, 21), (7, 28), (8, 36)])
def test_cifar_lin_grow_family_depths(n, depth):
    from repro.models.msdnet import msdnet_cifar

    net = msdnet_cifar(num_classes=10, nBlocks=n)
    assert net.num_exits == n and sum(net.cfg.block_layers()) == depth


def test_even_step_cifar_members_run():
    from repro.models.msdnet import msdnet_cifar

    for step in (1, 2):
        net = msdnet_cifar(num_classes=10, in_channels=1, nBlocks=5, stepmode="even", step=step, base=step,
                           nChannels=4, growthRate=2, head_channels=16, isc=True)
        assert len(net(torch.randn(2, 1, 32, 32))) == 5
