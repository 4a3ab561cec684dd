/* The one translation unit with mlkern_cuda.cuh's implementation that the
   nvcc-built tests link (as a user's program would); each test includes
   the headers for the declarations only. */
#include "mlkern.h"
#define MLKERN_CUDA_IMPLEMENTATION
#include "mlkern_cuda.cuh"
