"""Model families, one file each (timm style): plain nn.Modules plus named factories."""
