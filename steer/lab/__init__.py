"""The lab: data, small text-to-image models trained from scratch, and the theory experiments.

- data: coloured Fashion-MNIST (the one Fashion-MNIST reader); models: the pipelines' components, loading,
  sampling; tokenizer; classifier: the class / colour adherence CNN; memorization: NN-ratio measure, deduplication.
- train (command line ``steer lab train``): vae_stage, unet_stage, decoder_stage, export, with variants (the
  training sets), schedule (learning rate, EMA, time budget) and checkpoints (run-folder files).
- theory (command line ``steer lab relu-dae`` / ``relu-diffusion``): theory_data, theory_models, theory_training,
  theory_stats, theory_plots.
"""
