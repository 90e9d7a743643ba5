// Classify one 28x28 image on a microcontroller with the files of `toolkit export --format c`
// (export/tflm/): model_data.h/.cc and model_ops.h. Link TFLM's library for your target
// (or its CMSIS-NN / ESP-NN kernels: kTensorArenaSize already has their scratch margin).
#include <cmath>
#include <cstdint>

#include "model_data.h"
#include "model_ops.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/schema/schema_generated.h"

namespace {
alignas(16) uint8_t tensor_arena[fashion_mnist::kTensorArenaSize];
fashion_mnist::OpResolver resolver;
tflite::MicroInterpreter* interpreter = nullptr;
}  // namespace

// Once, at start-up: false if the model and the arena do not fit together.
bool SetUpClassifier() {
  if (fashion_mnist::RegisterOps(resolver) != kTfLiteOk) return false;
  static tflite::MicroInterpreter instance(tflite::GetModel(fashion_mnist::kModelData), resolver,
                                           tensor_arena, fashion_mnist::kTensorArenaSize);
  interpreter = &instance;
  return interpreter->AllocateTensors() == kTfLiteOk;
}

// pixels: 28x28 grayscale, 0-255, light garment on a dark background (Fashion-MNIST's way).
// Returns the class index (fashion_mnist::kClassNames[i]) or -1.
int Classify(const uint8_t* pixels) {
  int8_t* input = interpreter->input(0)->data.int8;
  for (int i = 0; i < 28 * 28; ++i) {
    long q = std::lround(pixels[i] / 255.0f / fashion_mnist::kInputScale) + fashion_mnist::kInputZeroPoint;
    input[i] = static_cast<int8_t>(q < -128 ? -128 : q > 127 ? 127 : q);
  }
  if (interpreter->Invoke() != kTfLiteOk) return -1;
  const int8_t* scores = interpreter->output(0)->data.int8;  // (q - kOutputZeroPoint) * kOutputScale
  int best = 0;
  for (int c = 1; c < fashion_mnist::kNumClasses; ++c) {
    if (scores[c] > scores[best]) best = c;
  }
  return best;
}
