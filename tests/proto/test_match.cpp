// Tag matching: ignore bits, directed receive, posting and arrival order,
// claimed messages.
#include "match.hpp"

#include <gtest/gtest.h>

using namespace mlx4fi::proto;

TEST(match, tag_and_ignore_bits)
{
    EXPECT_TRUE(tag_matches(0x1234, 0, 0x1234));
    EXPECT_FALSE(tag_matches(0x1234, 0, 0x1235));
    EXPECT_TRUE(tag_matches(0x1234, 0xff, 0x12ab));
    EXPECT_FALSE(tag_matches(0x1234, 0xff, 0x13ab));
    EXPECT_TRUE(tag_matches(0, ~0ull, 0xdeadbeef));
}

TEST(match, directed_receive)
{
    EXPECT_TRUE(src_matches(FI_ADDR_UNSPEC, 7));
    EXPECT_TRUE(src_matches(7, 7));
    EXPECT_FALSE(src_matches(7, 8));
    EXPECT_FALSE(src_matches(7, FI_ADDR_NOTAVAIL));
}

TEST(match, posted_receives_match_in_posting_order)
{
    match_queues q;
    rx_entry a, b, c;
    a.tagged = b.tagged = c.tagged = true;
    a.tag = 1;
    b.tag = 0;
    b.ignore = ~0ull; // wildcard
    c.tag = 1;
    q.post(&a);
    q.post(&b);
    q.post(&c);
    EXPECT_EQ(q.take_posted(true, 2, 0), &b); // only the wildcard takes tag 2
    EXPECT_EQ(q.take_posted(true, 1, 0), &a);
    EXPECT_EQ(q.take_posted(true, 1, 0), &c);
    EXPECT_EQ(q.take_posted(true, 1, 0), nullptr);
}

TEST(match, tagged_and_untagged_are_separate)
{
    match_queues q;
    rx_entry m;
    m.tagged = false;
    q.post(&m);
    EXPECT_EQ(q.take_posted(true, 0, 0), nullptr);
    EXPECT_EQ(q.take_posted(false, 0, 0), &m);
}

TEST(match, source_filter_skips_other_peers)
{
    match_queues q;
    rx_entry from3, any;
    from3.tagged = any.tagged = true;
    from3.src = 3;
    any.src = FI_ADDR_UNSPEC;
    q.post(&from3);
    q.post(&any);
    EXPECT_EQ(q.take_posted(true, 0, 5), &any);
    EXPECT_EQ(q.take_posted(true, 0, 3), &from3);
}

TEST(match, unexpected_in_arrival_order_and_claims)
{
    match_queues q;
    unexp_msg m1, m2, m3;
    m1.tagged = m2.tagged = m3.tagged = true;
    m1.tag = 5;
    m2.tag = 6;
    m3.tag = 5;
    m1.src = m2.src = m3.src = 1;
    q.add_unexpected(&m1);
    q.add_unexpected(&m2);
    q.add_unexpected(&m3);
    EXPECT_EQ(q.find_unexpected(true, 5, 0, FI_ADDR_UNSPEC), &m1);
    int ctx;
    m1.claimed_by = &ctx; // FI_PEEK|FI_CLAIM
    EXPECT_EQ(q.find_unexpected(true, 5, 0, FI_ADDR_UNSPEC), &m3);
    EXPECT_EQ(q.find_claimed(&ctx), &m1);
    EXPECT_EQ(q.find_unexpected(true, 0, ~0ull, 2), nullptr);
    q.remove_unexpected(&m1);
    EXPECT_EQ(q.find_claimed(&ctx), nullptr);
    EXPECT_EQ(q.find_unexpected(true, 0, ~0ull, 1), &m2);
}

TEST(match, cancel_finds_by_context_and_repost_front_keeps_priority)
{
    match_queues q;
    rx_entry a, b;
    int ca, cb;
    a.context = &ca;
    b.context = &cb;
    q.post(&a);
    q.post(&b);
    EXPECT_EQ(q.find_posted_by_context(&cb), &b);
    q.unpost(&b);
    EXPECT_EQ(q.find_posted_by_context(&cb), nullptr);
    rx_entry *first = q.take_posted(false, 0, 0);
    EXPECT_EQ(first, &a);
    q.post(&b);
    q.repost_front(&a); // a multi-receive buffer with room left
    EXPECT_EQ(q.take_posted(false, 0, 0), &a);
}
