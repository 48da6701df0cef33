// Shadows torch's c10/cuda/CUDAFunctions.h in the CUDA emulation: what the launchers use of it is
// declared in runtime.h (build.py puts this folder first on the include path).
#pragma once

#include "runtime.h"
