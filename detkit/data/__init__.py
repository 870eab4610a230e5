"""Datasets (coco, voc, shapes), albumentations transforms, samplers and loaders.

Entry points: `detkit.data.build.build_datasets` (config -> dataset) and
`detkit.data.loader.build_train_loader` / `build_test_loader` (dataset -> DataLoader).
Kept free of imports so that `import detkit.data.shapes` stays light.
"""
