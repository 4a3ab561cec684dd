/* The one file of the consumer that holds mlkern's implementation. */
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"
