"""Model families, one file each (timm style): plain nn.Modules plus named factories.

- :mod:`.base`: the multi-exit interface; :mod:`.staged`: backbones cut into stages, exits
  and channel-mask slots between them;
- :mod:`.msdnet` (IMTA), :mod:`.densenet` (GlanceNets, decision gates), :mod:`.resnet`
  (decision gates, DCP), :mod:`.vgg` and :mod:`.resnet50_dcp` (DCP), :mod:`.compact` and
  :mod:`.skipblocknet` (bias loss).

Their sizes are in docs/flops.md, their use in the papers' pages under docs/papers/.
"""
