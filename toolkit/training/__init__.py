"""Training: `train(TrainRequest(...))` and its parts (inputs, fitting, callbacks, checkpoint,
augment, precision, distill) and what a finished run says (summary). Imports TensorFlow only
when a run trains."""
