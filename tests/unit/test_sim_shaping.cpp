// Placeholder, filled in by issue 4 work.
#include <gtest/gtest.h>
