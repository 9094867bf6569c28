"""Recipe configs, shipped inside the package so `vaekit fit --config configs/...` works anywhere."""
