"""pairs: the two views of a study, frontal first, deterministic."""

from cxrgen.data.pairs import FRONTAL, LATERAL, choose_views


def test_frontal_first_lateral_second_whatever_the_order():
    pair = choose_views([(0, "b", LATERAL), (1, "a", FRONTAL)])
    assert (pair.first, pair.second, pair.single_view) == ("a", "b", False)


def test_one_image_is_used_twice_and_flagged():
    pair = choose_views([(0, "a", FRONTAL)])
    assert (pair.first, pair.second, pair.single_view) == ("a", "a", True)


def test_more_than_two_prefers_the_first_frontal_and_first_lateral():
    images = [(0, "f1", FRONTAL), (1, "f2", FRONTAL), (2, "l1", LATERAL), (3, "l2", LATERAL)]
    pair = choose_views(images)
    assert (pair.first, pair.second, pair.n_usable) == ("f1", "l1", 4)
    assert choose_views(list(reversed(images))) == pair


def test_same_projection_twice_takes_the_first_two_in_order():
    pair = choose_views([(2, "c", FRONTAL), (0, "a", FRONTAL), (1, "b", FRONTAL)])
    assert (pair.first, pair.second) == ("a", "b")


def test_no_image_gives_none():
    assert choose_views([]) is None
