// The provider's parameter parsers (FI_MLX4_RAILS, RAIL_WEIGHTS, STRIPE_*)
// and the table fi_info -e shows: good values, and every kind of bad one.
#include "mlx4fi/util/log.hpp"
#include "mlx4fi/util/params.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

using namespace mlx4fi::util;

TEST(params, table_lists_the_rail_parameters_with_defaults)
{
    const char *wanted[] = {
        "RAILS",     "RAIL_WEIGHTS",   "STRIPE_THRESHOLD", "STRIPE_MIN_CHUNK", "STRIPE_MIN_RATIO",
        "RAIL_INFO", "SIM_RATE_SCALE", "SIM_FAULT"};
    for (const char *name : wanted) {
        const param_def *found = nullptr;
        for (const param_def &p : param_table())
            if (std::string(p.name) == name) found = &p;
        ASSERT_NE(found, nullptr) << name;
        EXPECT_NE(std::string(found->help).find("(default: "), std::string::npos) << name;
    }
}

TEST(params, rail_ref)
{
    rail_ref r;
    ASSERT_TRUE(parse_rail_ref("mlx4_0:1", r));
    EXPECT_EQ(r.device, "mlx4_0");
    EXPECT_EQ(r.port, 1);
    ASSERT_TRUE(parse_rail_ref(" rocep1s0f0 : 2 ", r));
    EXPECT_EQ(r.device, "rocep1s0f0");
    EXPECT_EQ(r.port, 2);
    for (const char *bad : {"", "mlx4_0", "mlx4_0:", ":1", "mlx4_0:0", "mlx4_0:256", "mlx4_0:-1",
                            "mlx4_0:1x", "mlx4_0:1:2", "mlx 4:1", "mlx4_0:+1"}) {
        rail_ref keep{"unchanged", 9};
        EXPECT_FALSE(parse_rail_ref(bad, keep)) << bad;
        EXPECT_EQ(keep, (rail_ref{"unchanged", 9})) << bad;
    }
}

TEST(params, rail_list_good)
{
    std::vector<rail_ref> rails;
    ASSERT_TRUE(parse_rail_list("mlx4_0:1,mlx4_1:1", rails));
    ASSERT_EQ(rails.size(), 2u);
    EXPECT_EQ(rails[0], (rail_ref{"mlx4_0", 1}));
    EXPECT_EQ(rails[1], (rail_ref{"mlx4_1", 1}));
    ASSERT_TRUE(parse_rail_list(" mlx4_0:2 ", rails));
    ASSERT_EQ(rails.size(), 1u);
    EXPECT_EQ(rails[0].port, 2);
}

TEST(params, rail_list_bad_names_the_entry)
{
    struct bad {
        const char *text, *token;
    };
    for (bad b : {bad{"", "empty"}, bad{"mlx4_0:1,", "''"}, bad{"mlx4_0:1,,mlx4_1:1", "''"},
                  bad{"mlx4_0", "'mlx4_0'"}, bad{"mlx4_0:1;mlx4_1:1", "'mlx4_0:1;mlx4_1:1'"},
                  bad{"mlx4_0:1,mlx4_0:1", "twice"}, bad{"mlx4_0:1x", "'mlx4_0:1x'"},
                  bad{"mlx4_0:0", "'mlx4_0:0'"}}) {
        std::vector<rail_ref> rails{{"keep", 1}};
        std::string why;
        EXPECT_FALSE(parse_rail_list(b.text, rails, &why)) << b.text;
        EXPECT_NE(why.find(b.token), std::string::npos) << b.text << ": " << why;
        ASSERT_EQ(rails.size(), 1u);
        EXPECT_EQ(rails[0].device, "keep");
    }
}

TEST(params, weights_equal_list_and_per_rail)
{
    weight_override w;
    ASSERT_TRUE(parse_rail_weights("equal", w));
    EXPECT_EQ(w.mode, weight_mode::equal);
    ASSERT_TRUE(parse_rail_weights(" EQUAL ", w));
    EXPECT_EQ(w.mode, weight_mode::equal);

    ASSERT_TRUE(parse_rail_weights("2,1", w));
    EXPECT_EQ(w.mode, weight_mode::list);
    EXPECT_EQ(w.list, (std::vector<double>{2.0, 1.0}));
    ASSERT_TRUE(parse_rail_weights("0.5, 1e1 ,3", w));
    EXPECT_EQ(w.list, (std::vector<double>{0.5, 10.0, 3.0}));

    ASSERT_TRUE(parse_rail_weights("mlx4_0:1=40,mlx4_1:2=12.5", w));
    EXPECT_EQ(w.mode, weight_mode::per_rail);
    ASSERT_EQ(w.per_rail.size(), 2u);
    EXPECT_EQ(w.per_rail[0], (named_weight{{"mlx4_0", 1}, 40.0}));
    EXPECT_EQ(w.per_rail[1], (named_weight{{"mlx4_1", 2}, 12.5}));
}

TEST(params, weights_bad_keep_what_was_there)
{
    struct bad {
        const char *text, *token;
    };
    for (bad b :
         {bad{"", "empty"}, bad{"0,1", "'0'"}, bad{"2,-1", "'-1'"}, bad{"2,+1", "'+1'"},
          bad{"inf,1", "'inf'"}, bad{"nan,1", "'nan'"}, bad{"1e999,1", "'1e999'"},
          bad{"2x,1", "'2x'"}, bad{"2,", "''"}, bad{"two", "'two'"}, bad{"equals", "'equals'"},
          bad{"mlx4_0:1=0", "'0'"}, bad{"mlx4_0:1=", "''"}, bad{"mlx4_0=2", "'mlx4_0'"},
          bad{"mlx4_0:1=2,3", "mixes"}, bad{"3,mlx4_0:1=2", "mixes"},
          bad{"mlx4_0:1=2,mlx4_0:1=3", "twice"}, bad{"mlx4_0:1=2=3", "'2=3'"}}) {
        weight_override w;
        w.mode = weight_mode::equal;
        std::string why;
        EXPECT_FALSE(parse_rail_weights(b.text, w, &why)) << b.text;
        EXPECT_NE(why.find(b.token), std::string::npos) << b.text << ": " << why;
        EXPECT_EQ(w.mode, weight_mode::equal) << b.text;
    }
}

TEST(params, positive_and_ratio)
{
    double v = 7.0;
    EXPECT_TRUE(parse_positive("0.25", v));
    EXPECT_DOUBLE_EQ(v, 0.25);
    EXPECT_TRUE(parse_positive(".5", v));
    EXPECT_DOUBLE_EQ(v, 0.5);
    for (const char *bad :
         {"", "0", "0.0", "-1", "+1", "1.5.2", "1 2", "inf", "nan", "0x10", "1e999"})
        EXPECT_FALSE(parse_positive(bad, v)) << bad;
    EXPECT_DOUBLE_EQ(v, 0.5);

    EXPECT_TRUE(parse_ratio("1", v));
    EXPECT_DOUBLE_EQ(v, 1.0);
    EXPECT_TRUE(parse_ratio(" 0.1 ", v));
    EXPECT_DOUBLE_EQ(v, 0.1);
    for (const char *bad : {"0", "1.01", "2", "-0.5", "0.5x", "half"})
        EXPECT_FALSE(parse_ratio(bad, v)) << bad;
    EXPECT_DOUBLE_EQ(v, 0.1);
}

TEST(params, sizes)
{
    size_t v = 1;
    EXPECT_TRUE(parse_size("262144", v));
    EXPECT_EQ(v, 262144u);
    EXPECT_TRUE(parse_size("0", v));
    EXPECT_EQ(v, 0u);
    EXPECT_TRUE(parse_size("256K", v));
    EXPECT_EQ(v, 262144u);
    EXPECT_TRUE(parse_size(" 4m ", v));
    EXPECT_EQ(v, size_t(4) << 20);
    EXPECT_TRUE(parse_size("1G", v));
    EXPECT_EQ(v, size_t(1) << 30);
    for (const char *bad : {"", "K", "-5", "+5", "12junk", "1.5M", "0x10", "1KB",
                            "99999999999999999999", "17179869184G"})
        EXPECT_FALSE(parse_size(bad, v)) << bad;
    EXPECT_EQ(v, size_t(1) << 30);
}

// load_config reads the environment (through fi_param_get and, for sizes, the
// same variables directly). Without fi_param_define the string and boolean
// parameters read as unset, so these cover the strictly parsed sizes and the
// defaults.
class params_env : public ::testing::Test
{
  protected:
    void TearDown() override
    {
        unsetenv("FI_MLX4_STRIPE_THRESHOLD");
        unsetenv("FI_MLX4_STRIPE_MIN_CHUNK");
    }
};

TEST_F(params_env, defaults)
{
    config cfg = load_config(log_provider());
    EXPECT_FALSE(cfg.rails.restricted);
    EXPECT_EQ(cfg.weights.mode, weight_mode::computed);
    EXPECT_EQ(cfg.stripe_threshold, 262144u);
    EXPECT_EQ(cfg.stripe_min_chunk, 65536u);
    EXPECT_DOUBLE_EQ(cfg.stripe_min_ratio, 0.25);
    EXPECT_FALSE(cfg.rail_info);
}

TEST_F(params_env, stripe_sizes_good_and_malformed)
{
    setenv("FI_MLX4_STRIPE_THRESHOLD", "1M", 1);
    setenv("FI_MLX4_STRIPE_MIN_CHUNK", "12junk", 1);
    config cfg = load_config(log_provider());
    EXPECT_EQ(cfg.stripe_threshold, size_t(1) << 20);
    EXPECT_EQ(cfg.stripe_min_chunk, 65536u); // default kept
    setenv("FI_MLX4_STRIPE_THRESHOLD", "-5", 1);
    EXPECT_EQ(load_config(log_provider()).stripe_threshold, 262144u);
}

TEST(params, table_lists_the_connection_parameters_with_defaults)
{
    const char *wanted[] = {"RC_TIMEOUT",    "RC_RETRY_COUNT",   "RNR_RETRY",
                            "RNR_TIMER",     "CONNECT_RETRY_MS", "CONNECT_TIMEOUT_MS",
                            "PEER_RETRY_MS", "KEEPALIVE_MS",     "EAGER_LIMIT"};
    for (const char *name : wanted) {
        const param_def *found = nullptr;
        for (const param_def &p : param_table())
            if (std::string(p.name) == name) found = &p;
        ASSERT_NE(found, nullptr) << name;
        EXPECT_NE(std::string(found->help).find("(default: "), std::string::npos) << name;
    }
    for (const param_def &p : param_table()) // replaced by the QPs' own timing
        EXPECT_NE(std::string(p.name), "SIM_RETRY_TIMEOUT_MS");
}
