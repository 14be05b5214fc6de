"""What several editors share and none of them is: least-squares compensation (``compensate``),
BatchNorm recalibration (``bnrecal``), the one training loop (``finetune``) and ModHiFi-P's
transformer path (``modhifi_transformer``). The plugins themselves sit one folder up."""
