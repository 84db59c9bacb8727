// kernels.cu as C++ for the emulator (a .cu file cannot be a C++ source of a second target).
#include "kernels.cu"
