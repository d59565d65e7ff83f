//! Hand-written reward cases: answer equivalence, extraction, format, and whole-response grading.
//! Each case has a name so a failure says which convention broke.

use mmr1_fast::rl::reward::{extract_answer, format_ok, is_equivalent, RewardConfig, RewardItem};

/// (name, predicted answer, reference, equivalent?)
#[rustfmt::skip]
const EQUIV: &[(&str, &str, &str, bool)] = &[
    // numbers and fractions
    ("frac_half_vs_decimal", r"\frac{1}{2}", "0.5", true),
    ("boxed_half_vs_decimal", r"\boxed{\frac{1}{2}}", "0.5", true),
    ("twelve_vs_121", "12", "121", false),
    ("thousands_braced", r"1{,}000", "1000", true),
    ("thousands_plain", "1,000", "1000", true),
    ("thousands_million", "12,345,678", "12345678", true),
    ("comma_list_is_not_thousands", "1,2", "12", false),
    ("frac_short_form", r"\frac34", "0.75", true),
    ("dfrac_vs_slash", r"\dfrac{3}{4}", "3/4", true),
    ("tfrac_vs_frac", r"\tfrac{3}{4}", r"\frac{3}{4}", true),
    ("negative_frac_placement", r"-\frac{3}{4}", r"\frac{-3}{4}", true),
    ("leading_dot_decimal", ".5", "0.5", true),
    ("integer_vs_decimal", "5.0", "5", true),
    ("scientific_times", r"1.5\times10^{3}", "1500", true),
    ("two_dots_not_a_number", "1.5.3", "1.5", false),
    // Written numbers compare as written; the relative tolerance is for computed values.
    ("written_numbers_compare_exactly", "1000000.5", "1000000", false),
    ("cents_differ", "16386.16", "16386.17", false),
    ("relative_tolerance_computed", "1000000.4", "2000001/2", true),
    ("relative_tolerance_surd", "1.41421356", r"\sqrt{2}", true),
    ("relative_tolerance_fail", "1.001", "1", false),
    ("absolute_tolerance_near_zero", "0.0000000001", "0", true),
    ("small_but_not_zero", "0.00001", "0", false),
    ("unicode_minus", "\u{2212}3", "-3", true),
    ("sign_matters", "3", "-3", false),
    ("div_by_zero_vs_zero", "1/0", "0", false),
    ("div_by_zero_is_not_infinity", "1/0", r"\infty", false),
    ("overflow_is_not_equal_to_overflow", "10^{1000}", "10^{1001}", false),
    ("infinity", r"-\infty", r"- \infty", true),
    // surds and pi
    ("nested_frac_sqrt", r"\frac{\sqrt{3}}{2}", r"\frac{1}{2}\sqrt{3}", true),
    ("surd_simplified", r"2\sqrt{3}", r"\sqrt{12}", true),
    ("surd_different", r"2\sqrt{3}", r"\sqrt{13}", false),
    ("unicode_sqrt", "\u{221A}3", r"\sqrt{3}", true),
    ("cube_root", r"\sqrt[3]{27}", "3", true),
    ("pi_short_decimal", "3.14", r"\pi", false),
    ("pi_long_decimal", "3.14159265358979", r"\pi", false),
    ("pi_multiple_forms", r"\frac{\pi}{2}", r"0.5\pi", true),
    ("unicode_pi", "2\u{03C0}", r"2\pi", true),
    ("pi_inside_function_is_a_number", r"\cos\pi", "-1", true),
    // symbolic
    ("symbolic_half_x", r"\frac{x}{2}", "0.5x", true),
    ("symbolic_square", "(x+1)^2", "x^2+2x+1", true),
    ("symbolic_wrong_sign", "x^2+1", "x^2-1", false),
    ("symbolic_different_variables", "2a", "2b", false),
    ("symbolic_pi_r", r"2\pi r", r"2r\pi", true),
    // assignments and relations
    ("assignment_stripped", "x = 5", "5", true),
    ("assignment_in_reference", "5", "x=5", true),
    ("assignment_with_subscript", "a_1 = 3", "3", true),
    ("relation_is_not_assignment", r"x \le 5", "5", false),
    // A chain states its last side (Math-Verify: "Last = is considered").
    ("chain_states_last_side", "x = y = 5", "5", true),
    ("chain_with_wrong_last_side", "x = y = 5", "6", false),
    // multiple choice
    ("choice_paren", "(B)", "B", true),
    ("choice_dot", "B.", "B", true),
    ("choice_close_paren", "B)", "B", true),
    ("choice_text_wrapper", r"\text{B}", "B", true),
    ("choice_option_word", "Option B", "B", true),
    ("choice_lowercase", "b", "B", true),
    ("choice_reference_in_parens", "B", "(B)", true),
    ("choice_wrong_letter", "B", "C", false),
    ("choice_with_option_text", "(C) 12 cm", "C", true),
    ("choice_number_vs_letter", "12", "B", false),
    ("bare_letter_past_j_is_case_sensitive", "k", "K", false),
    // text
    ("text_yes_vs_Yes", r"\text{yes}", "Yes", true),
    ("text_phrase_case", r"\text{North East}", "north east", true),
    ("words_are_not_products", "no", "on", false),
    // degrees, units, currency, percent
    ("degrees_circ", r"90^\circ", "90", true),
    ("degrees_braced_circ", r"90^{\circ}", "90", true),
    ("degrees_unicode", "90\u{00B0}", "90", true),
    ("degrees_word", "90 degrees", r"90^\circ", true),
    ("unit_cm", "5 cm", "5", true),
    ("unit_glued", "5cm", "5", true),
    ("unit_text_wrapped", r"5\text{ cm}", "5", true),
    ("unit_squared", r"12 \mathrm{cm}^2", "12", true),
    ("unit_wrong_value", "6 cm", "5", false),
    ("unit_after_fraction", r"\frac{1}{2} m", "0.5", true),
    ("dollar_sign", r"\$5.00", "5", true),
    ("dollar_word", "5 dollars", "5", true),
    ("percent_vs_number", r"50\%", "50", true),
    ("percent_prediction_vs_fraction", "50%", "0.5", false),
    ("percent_reference_accepts_fraction", "0.5", r"50\%", true),
    // tuples, intervals, sets
    ("tuple_left_right", r"\left(1, 2\right)", "(1,2)", true),
    ("tuple_numeric_elements", r"(0.5, 2)", r"(\frac{1}{2}, 2)", true),
    ("tuple_order_matters", "(2, 1)", "(1, 2)", false),
    ("tuple_length_matters", "(1, 2, 3)", "(1, 2)", false),
    ("interval_brackets_matter", "[1, 2)", "[1, 2]", false),
    ("interval_infinity", r"(-\infty, 3]", r"(-\infty,3]", true),
    ("set_order_free", r"\{2, 1\}", r"\{1,2\}", true),
    ("set_vs_bare_list", "1, 2", r"\{2, 1\}", true),
    ("set_different", r"\{1, 3\}", r"\{1,2\}", false),
    // wrappers and junk
    ("surrounding_dollars", "$5$", "5", true),
    ("trailing_period", "5.", "5", true),
    ("inner_boxed", r"\boxed{5}", "5", true),
    ("empty_prediction", "", "5", false),
    ("unbalanced_fraction", r"\frac{1}{", "1", false),    // ---- Cases from Math-Verify's test suite (scripts/math_verify_suite.py) and near misses
    // relations and inequalities
    ("relation_geq_vs_ascii", r"x \geq 5", "x >= 5", true),
    ("relation_flipped_sides", r"5 \geq x", r"x \leq 5", true),
    ("relation_flipped_sides_ge", r"5 \leq x", r"x \geq 5", true),
    ("relation_negated_both_sides", "-x > -1", "x < 1", true),
    ("relation_negated_both_sides_le", "-x >= -1", "x <= 1", true),
    ("relation_lt_command", r"x \lt 3", "x < 3", true),
    ("relation_neq_command", r"x \neq 3", "x != 3", true),
    ("relation_unicode_le", "x \u{2264} 2", r"x \leq 2", true),
    ("relation_strictness_differs", "x < 5", r"x \le 5", false),
    ("relation_direction_differs", "x > 5", "x < 5", false),
    ("relation_negated_without_flip", "-x < -1", "x < 1", false),
    ("relation_other_bound", r"x \geq 6", "x >= 5", false),
    ("equation_rearranged", r"y=-\frac{1}{2}x+\frac{3}{4}", "2x+4y-3=0", true),
    ("equation_scaled", "x^2/16 + y^2/12 = 1/4", "x^2/4 + y^2/3 = 1", true),
    ("equation_negated", "-34x-45y+20z-100=0", "34x+45y-20z+100=0", true),
    ("equation_other_constant", "2x+4y-4=0", "2x+4y-3=0", false),
    ("equation_not_equivalent_power", "x^2 = 4", "x = 2", false),
    ("inequality_scaled_negative_is_flip", "-2x > -4", "x > 2", false),
    ("chain_states_last_value", "x = 5+5+1 = 7 =11", "x = 11", true),
    ("chain_reference_last_value", "0", r"1 = \zzz = x = 0", true),
    ("computation_states_result", r"\frac{1}{2} + \frac{1}{2} = 1", "1", true),
    ("computation_wrong_result", "2+2 = 5", "4", false),
    ("matrix_sum_states_result", r"\begin{pmatrix}1 & 2\end{pmatrix} + \begin{pmatrix}5 & 6\end{pmatrix} = \begin{pmatrix}6 & 8\end{pmatrix}", r"\begin{pmatrix}6 & 8\end{pmatrix}", true),
    ("approx_after_value", r"x=\frac13\approx0.33", "1/3", true),
    ("approx_alone", r"x\approx11", "11", true),
    ("approx_wrong_value", r"x \approx 12", "11", false),
    ("labelled_reference", "1", "|AB|=1", true),
    ("labelled_ratio", "11:21", "V_{1}:V_{2}=11:21", true),
    ("labelled_tuple", "(3,2)", "(p,q)=(3,2)", true),
    ("labelled_fraction", r"\frac{1}{\sqrt{6}}", r"\frac{NO}{BO}=\frac{1}{\sqrt{6}}", true),
    ("labelled_wrong_value", "2", "|AB|=1", false),
    // several solutions
    ("solutions_or_text", r"x = 2 \text{ or } x = 3", "2, 3", true),
    ("solutions_and_text_order_free", r"6 \text{ and } 8", "8, 6", true),
    ("solutions_and_words", "1 and 2 and 3", "1, 2, 3", true),
    ("solutions_trailing_and", r"19, 46, \text{ and } 82", "19, 46, and 82", true),
    ("solutions_assignments", "p=-1, p=\\frac{15}{8}", r"p = -1 \text{ and } p = \dfrac{15}{8}", true),
    ("solutions_labelled_list", "4, 5", "AB=4,CD=5", true),
    ("solutions_missing_one", "x = 2", "2, 3", false),
    ("solutions_extra_one", "1, 2, 3", "2, 3", false),
    ("solutions_one_wrong", r"x = 2 \text{ or } x = 4", "2, 3", false),
    ("plus_minus_expands", r"\pm 3", "3, -3", true),
    ("plus_minus_in_set", r"x = \pm 2021", r"\{-2021, 2021\}", true),
    ("plus_minus_with_base", r"1 \pm \sqrt{2}", r"1+\sqrt{2}, 1-\sqrt{2}", true),
    ("plus_minus_is_two_values", "2021", r"\pm 2021", false),
    ("plus_minus_wrong_magnitude", r"\pm 3", "4, -4", false),
    // sets and tuples
    ("set_of_tuples_order_free", "(2,1),(1,2)", "(1,2),(2,1)", true),
    ("set_of_tuples_inner_order_kept", "(2,1),(2,1)", "(1,2),(2,1)", false),
    ("tuples_with_semicolons", "(4, -2, 6), (0, 0, 0)", "(0;0;0),(4;-2;6)", true),
    ("list_with_semicolons", r"\{-12, -11, -10\}", "-12;-11;-10", true),
    ("bare_brace_set", "{-2021, 2021}", r"\pm 2021", true),
    ("set_duplicates", "(3,17),(17,3),(3,17)", "(17,3),(3,17)", true),
    ("tuples_glued_or", r"(7,11),\ (11,7)", "(11,7)or(7,11)", true),
    ("tuple_assignment_list", r"(x, y) = (5, 8) \quad \text{and} \quad (8, 5)", "(5, 8), (8, 5)", true),
    ("set_element_wrong", "(1,2),(2,2)", "(1,2),(2,1)", false),
    // intervals and unions
    ("union_of_intervals", r"[-1, -\tfrac12) \cup (-\tfrac12, 0) \cup (0, 1)", r"[-1, -\frac{1}{2}) \cup (-\frac{1}{2}, 0) \cup (0, 1)", true),
    ("union_order_free", r"(1, \infty) \cup (-\infty, 0)", r"(-\infty, 0) \cup (1, \infty)", true),
    ("union_with_singleton", r"\{-1\} \cup [0,7)", r"\{-1\}\cup[0, 7)", true),
    ("union_bracket_matters", r"[0,1] \cup (2,3)", r"[0,1) \cup (2,3)", false),
    ("union_missing_piece", r"(0,1)", r"(0,1) \cup (2,3)", false),
    ("interval_membership", r"x \in [-2,7]", r"-2 \le x \le 7", true),
    ("double_inequality_reference", "(-793, 10)", "-793 < a < 10", true),
    ("double_inequality_of_function", "(0,1)", "0<f(x)<1", true),
    ("double_inequality_closedness", "[-793, 10)", "-793 < a < 10", false),
    // As Math-Verify by default: a relation does not answer an interval reference.
    ("relation_for_interval_reference", r"-2 \le x \le 7", r"x \in [-2,7]", false),
    // matrices
    ("pmatrix_vs_bmatrix", r"\begin{pmatrix}0 & 0 \\0 & 0\end{pmatrix}", r"\begin{bmatrix}0 & 0 \\0 & 0\end{bmatrix}", true),
    ("array_matrix", r"\left[\begin{array}{cc}1 & 2 \\3 & 4\end{array}\right]", r"\begin{pmatrix}1 & 2 \\3 & 4\end{pmatrix}", true),
    ("matrix_entry_values", r"\begin{pmatrix}0.5 & \frac{3}{4}\end{pmatrix}", r"\begin{pmatrix}\frac{1}{2} & 0.75\end{pmatrix}", true),
    ("matrix_symbolic_entry", r"\begin{pmatrix}\frac{1}{3x^{2/3}}&0\\-\sin(x)&0\end{pmatrix}", r"\begin{pmatrix}\frac{1}{3\sqrt[3]{x}^2}&0\\-\sin(x)&0\\\end{pmatrix}", true),
    ("matrix_transposed", r"\begin{pmatrix}1 \\ 2\end{pmatrix}", r"\begin{pmatrix}1 & 2\end{pmatrix}", false),
    ("matrix_entry_differs", r"\begin{pmatrix}1 & 2 \\ 3 & 5\end{pmatrix}", r"\begin{pmatrix}1 & 2 \\ 3 & 4\end{pmatrix}", false),
    ("determinant_is_not_matrix", r"\begin{vmatrix}1 & 0 \\ 0 & 1\end{vmatrix}", r"\begin{pmatrix}1 & 0 \\ 0 & 1\end{pmatrix}", false),
    // numbers: decimal commas, separators, currency, fraction forms
    ("decimal_comma", "1000,99", "1000.99", true),
    ("decimal_comma_reference", "1.22", "1,22", true),
    ("decimal_comma_leading_zero", "0.111", "0,111", true),
    ("decimal_comma_wrong_digits", "1,23", "1.22", false),
    ("spaced_comma_is_a_list", "1, 5", "1.5", false),
    ("thousands_is_not_decimal", "1,000", "1", false),
    ("thousands_with_decimals", "1,000.99", "1000.99", true),
    ("currency_euro", "1,000.99\u{20AC}", "1000.99", true),
    ("currency_dollar_after", "1,000.99$", "1000.99", true),
    ("negative_space_thousands", r"\$16,\!386.20", "16386.20", true),
    ("negative_space_then_space", r"11,\! 111,\! 111,\! 100", "11111111100", true),
    ("space_thousands", "1 000", "1000", true),
    ("space_thousands_wrong", "1 000", "100", false),
    ("tfrac_short_form", r"\tfrac12", "0.5", true),
    ("frac_brace_only_denominator", r"\frac3{3}", "1", true),
    ("sqrt_short_form", r"\sqrt3", r"\sqrt{3}", true),
    ("cfrac", r"\cfrac{1}{3}", "1/3", true),
    ("percent_pct", "28 pct", r"28\%", true),
    ("percent_percentage", "28 percentage", r"28\%", true),
    ("doubled_backslashes_reference", r"\left( \frac{1}{5}, \frac{1}{6} \right)", r"\\left(\\frac{1}{5},\\frac{1}{6}\\right)", true),
    ("doubled_backslashes_wrong", r"\left( \frac{1}{5}, \frac{1}{7} \right)", r"\\left(\\frac{1}{5},\\frac{1}{6}\\right)", false),
    // symbolic identities, decided at sample points
    ("identity_tan_sec", r"\sec^2(y)", r"\tan^2(y)+1", true),
    ("identity_double_angle", r"2\sin x\cos x", r"\sin(2x)", true),
    ("identity_cot", r"\frac{\cos t}{\sin t}", r"\cot t", true),
    ("identity_abs_sqrt", r"\sqrt{x^2}", "|x|", true),
    ("identity_near_miss_sec", r"\sec^2(y)", r"\tan^2(y)", false),
    ("identity_near_miss_small_offset", r"\sin x + 0.001", r"\sin x", false),
    ("abs_is_not_identity", "|x|", "x", false),
    ("sqrt_square_is_not_x", r"\sqrt{x^2}", "x", false),
    ("inverse_function_notation", r"\sin^{-1} x", r"\arcsin x", true),
    ("inverse_is_not_reciprocal", r"\sin^{-1} x", r"\frac{1}{\sin x}", false),
    ("inverse_is_not_negative_power", r"\sin^{-1} x", r"(\sin x)^{-1}", false),
    ("log_domains_disjoint", r"\ln(x-4)", r"\ln(-x-4)", false),
    // a list written in order answers an ordered pair; a set, another order, a closed interval do not
    ("braced_list_answers_pair", "{1,3}", "(1,3)", true),
    ("bare_list_answers_pair", "1, 3", "(1, 3)", true),
    ("braced_list_reversed_is_not_pair", "{1,3}", "(3,1)", false),
    ("set_is_not_pair", r"\{1,3\}", "(1,3)", false),
    ("braced_list_is_not_closed_interval", "{1,3}", "[1,3]", false),
    // arithmetic on constant matrices left in the answer is compared by value
    ("matrix_sum_value", r"\begin{pmatrix}1 & 2 \\ 3 & 4\end{pmatrix} + \begin{pmatrix}5 & 6 \\ 7 & 8\end{pmatrix}", r"\begin{pmatrix}6 & 8 \\ 10 & 12\end{pmatrix}", true),
    ("matrix_product_value", r"\begin{pmatrix}1 & 2 \\ 3 & 4\end{pmatrix} \begin{pmatrix}0 & 1 \\ 1 & 0\end{pmatrix}", r"\begin{bmatrix}2 & 1 \\ 4 & 3\end{bmatrix}", true),
    ("matrix_product_order_matters", r"\begin{pmatrix}0 & 1 \\ 1 & 0\end{pmatrix} \begin{pmatrix}1 & 2 \\ 3 & 4\end{pmatrix}", r"\begin{bmatrix}2 & 1 \\ 4 & 3\end{bmatrix}", false),
    ("matrix_difference_is_not_sum", r"\begin{pmatrix}1 & 2 \\ 3 & 4\end{pmatrix} - \begin{pmatrix}5 & 6 \\ 7 & 8\end{pmatrix}", r"\begin{pmatrix}6 & 8 \\ 10 & 12\end{pmatrix}", false),
    ("matrix_shapes_mismatch", r"\begin{pmatrix}1 & 2\end{pmatrix} + \begin{pmatrix}1 \\ 2\end{pmatrix}", r"\begin{pmatrix}2 & 4\end{pmatrix}", false),
    // solutions as `;`-separated groups of the same assignments are tuples
    ("assignment_groups_are_tuples", "(5,2),(7,2)", "p=5,q=2;p=7,q=2", true),
    ("assignment_groups_order_kept", "(2,5),(2,7)", "p=5,q=2;p=7,q=2", false),
    ("assignment_groups_value_wrong", "(5,2),(7,3)", "p=5,q=2;p=7,q=2", false),
    ("assignment_groups_are_not_one_tuple", "(5,2,7,2)", "p=5,q=2;p=7,q=2", false),
    ("assignments_in_order_answer_pair", "x = 1, y = 3", "(1, 3)", true),
    ("assignment_groups_other_names", "(5,2),(7,2)", "p=5,q=2;q=7,p=2", false),
    // list elements may assign one name an expression (`y_1 = ..`)
    ("labelled_expressions_in_list", r"-2(x - 1)^2 + 5, 3(x + 2)^2 - 2", r"y_{1}=-2 x^{2}+4 x+3, y_{2}=3 x^{2}+12 x+10", true),
    ("labelled_expressions_one_wrong", r"-2(x - 1)^2 + 5, 3(x + 2)^2", r"y_{1}=-2 x^{2}+4 x+3, y_{2}=3 x^{2}+12 x+10", false),
    // prose nouns in a text wrapper after a quantity (GSM8K-style answers)
    ("text_noun_after_number", r"10 \text{ apples}", "10", true),
    ("text_nouns_after_spacing", r"4\,\text{red apples}", "4", true),
    ("text_noun_mbox_tilde", r"12~\mbox{students}", "12", true),
    ("text_number_and_noun", r"\text{12 students}", "12", true),
    ("text_noun_after_fraction", r"\frac{3}{4} \text{ cups}", "0.75", true),
    ("text_noun_wrong_number", r"11 \text{ apples}", "10", false),
    ("text_noun_in_parentheses", r"2 \text{ (apples)}", "2", true),
    ("text_million_changes_the_number", r"2 \text{ million}", "2", false),
    ("text_or_more_is_not_the_number", r"5 \text{ or more}", "5", false),
    ("text_of_is_not_the_number", r"\frac{1}{2} \text{ of the pie}", r"\frac12", false),
    ("text_after_variable_kept", r"x \text{ apples}", "x", false),
    // factorials, binomials, floors, logarithms to a base
    ("factorial_value", "5!", "120", true),
    ("factorial_of_group", "(2+1)!", "6", true),
    ("factorial_is_not_its_argument", "4!", "4", false),
    ("binomial_value", r"\binom{5}{2}", "10", true),
    ("dbinom_value", r"\dbinom{6}{3}", "20", true),
    ("binomial_wrong", r"\binom{5}{3}", "5", false),
    ("floor_value", r"\lfloor 3.7 \rfloor", "3", true),
    ("ceil_value", r"\left\lceil \frac{7}{2} \right\rceil", "4", true),
    ("floor_is_not_ceil", r"\lceil 3.2 \rceil", "3", false),
    ("log_base_value", r"\log_2 8", "3", true),
    ("log_braced_base_value", r"\log_{3} 81", "4", true),
    ("log_base_wrong", r"\log_2 9", "3", false),
    // mixed numbers, Euler's number inside a function
    ("mixed_number", r"2\frac{1}{2}", r"\frac{5}{2}", true),
    ("mixed_number_negative", r"-3\frac{3}{4}", "-3.75", true),
    ("mixed_number_is_not_a_product", r"2\frac{1}{2}", "1", false),
    ("number_times_symbolic_fraction", r"2\frac{\pi}{4}", r"\frac{\pi}{2}", true),
    ("ln_of_e", r"\ln e", "1", true),
    ("ln_of_e_squared", r"\ln(e^{2})", "2", true),
    ("decimal_is_not_e", "2.718281828", "e", false),
    ("decimal_is_not_expression_in_e", "0.6321205588", r"1 - \frac{1}{e}", false),
];

/// (name, response, extracted answer)
#[rustfmt::skip]
const EXTRACT: &[(&str, &str, Option<&str>)] = &[
    ("last_box_wins", r"first \boxed{1}, then \boxed{2}", Some("2")),
    ("fbox", r"so \fbox{7}", Some("7")),
    ("nested_braces", r"\boxed{\frac{\sqrt{3}}{2}}", Some(r"\frac{\sqrt{3}}{2}")),
    ("thousands_in_box", r"\boxed{1{,}000}", Some(r"1{,}000")),
    ("empty_box", r"\boxed{}", None),
    ("unbalanced_box", r"\boxed{12", None),
    ("unbalanced_after_good_box", r"\boxed{3} but wait \boxed{12", None),
    ("think_box_then_answer_box", r"<think>\boxed{3}</think><answer>\boxed{5}</answer>", Some("5")),
    ("think_box_then_plain_answer", r"<think>\boxed{3}</think><answer>5</answer>", Some("5")),
    ("answer_block_phrase", "<answer>The answer is 7.</answer>", Some("7.")),
    ("answer_block_unclosed", "<answer> 42 ", Some("42")),
    ("answer_is_phrase", "so the answer is 12.\nDone", Some("12.")),
    ("answer_colon", "Answer: (B)", Some("(B)")),
    ("markdown_answer", "**Answer:** 5", Some("5")),
    ("no_answer", "I am not sure.", None),
    ("space_before_brace", r"\boxed {4}", Some("4")),
    ("boxed_token_form", r"\boxed 4 is it", Some("4")),
    ("escaped_set_braces", r"\boxed{\{1,2\}}", Some(r"\{1,2\}")),
    ("outermost_of_nested_boxes", r"\boxed{\boxed{5}}", Some(r"\boxed{5}")),
    ("other_command_is_not_a_box", r"\boxedfoo{3} Answer: 4", Some("4")),
    ("unclosed_think_still_graded", r"<think> long \boxed{9}", Some("9")),
    ("closed_think_and_nothing_after", r"<think>\boxed{3}</think>", None),
    ("unicode_around", "答案 \\boxed{−3} 🙂", Some("−3")),    // several boxes, phrases, unboxed answers (after Math-Verify's extraction)
    ("several_boxes_joined", r"\boxed{1}\boxed{2}", Some("1, 2")),
    ("boxes_joined_by_and", r"\(\boxed{6}\) and \(\boxed{8}\)", Some("6, 8")),
    ("boxes_joined_by_commas", r"$$\boxed{2}, \boxed{3}, \boxed{5}$$", Some("2, 3, 5")),
    ("same_box_twice_is_one_answer", r"\boxed{4} \boxed{4}", Some("4")),
    ("boxes_apart_last_wins", r"\boxed{1}. So y is \boxed{2}", Some("2")),
    ("final_answer_after_box", r"so $x = \boxed{255}$. The final answer is $10,455$. I hope it is correct.", Some("10,455")),
    ("answer_phrase_math_span", r"so the answer is $\frac12$.", Some(r"\frac12")),
    ("answer_phrase_then_sentence", "Final Answer: The final answer is (-6, 10). I hope it is correct.", Some("(-6, 10).")),
    ("answer_phrase_is_value", "Final Answer: The largest $n$ is 34.", Some("34.")),
    ("no_box_last_math_span", r"Therefore $x \geq 5$ is the solution.", Some(r"x \geq 5")),
    ("display_math_across_lines", "Answer \\[ \n 9 \n \\]", Some("9")),
    ("inline_math_not_across_lines", "Answer $ \n 9 \n $", None),
    ("escaped_dollar_inside_math", r"Answer $ \frac{1}{2} \$ = \frac{10}{9} $", Some(r"\frac{1}{2} \$ = \frac{10}{9}")),
    ("lone_dollar_is_currency", "it costs $5 today", Some("5")),
    ("cut_off_in_thinking_no_math_fallback", r"<think> so $x = 5$ and then", None),
    ("closed_thinking_math_fallback", r"<think> so $x = 4$</think> The area is $5$.", Some("5")),
    ("doubled_backslashes", r"\\boxed{\\frac{1}{2}}", Some(r"\frac{1}{2}")),
    // numbers in prose (Math-Verify's rightmost number), never inside broken math or glued to letters
    ("prose_last_number", "the number is not 10 which is 1,000.99\u{20AC}", Some("1,000.99")),
    ("prose_number_after_last_math", r"so $d = \frac{90}{n}$. Hence there are 12 sequences.", Some("12")),
    ("prose_math_after_last_number", r"there are 12 sequences with $d = \frac{90}{n}$.", Some(r"d = \frac{90}{n}")),
    ("prose_expression", "the probability that Alice wins is 2/3.", Some("2/3")),
    ("prose_percent", "so the error increases by 100%.", Some("100%")),
    ("prose_number_glued_to_letters", "AZYUK2A", None),
    ("prose_number_under_a_word_is_not_read", "so x is the square root of 2", None),
    ("prose_negative_word_is_not_read", "so the result is negative 3.", None),
    ("phrase_sentence_modified_number", "Final Answer: It is the square root of 2.", Some("It is the square root of 2.")),
    ("broken_inline_math_is_not_prose", "Answer $ \n 9 \n $", None),
    ("cut_off_in_thinking_no_number", "<think> so x is 5 and", None),
    // a chat-template turn marker ends the response
    ("turn_marker_ends_response", "so the answer is 2/3. <|im_start|>user Is it 5?", Some("2/3.")),
    ("turn_marker_number_fallback", "so it is 7 <|im_end|> 8", Some("7")),
    // answer phrases holding a sentence or several math spans
    ("phrase_sentence_one_number", "Final Answer: Jane started growing Sphere 3 hours ago. I hope it is correct.", Some("3")),
    ("phrase_sentence_two_numbers", "Final Answer: Jane waited 3 hours and 5 minutes.", Some("Jane waited 3 hours and 5 minutes.")),
    ("phrase_math_spans_listed", r#"The final answer is \"$12 $ and $13 $\". I hope it is correct."#, Some("12, 13")),
    ("phrase_math_spans_with_words", r"Final Answer: $12$ apples, not $13$", Some("13")),
    // boxes listing answers with a few words between them; revisions and sentences keep the last
    ("boxes_with_words_and", r"\boxed{1} papers and \boxed{2} bins", Some("1, 2")),
    ("boxes_for_parts", r"$$\boxed{(3, 3)} \text{ for part (a) and } \boxed{(1, 1)}$$", Some("(3, 3), (1, 1)")),
    ("boxes_labelled", r"\(y_1 = \boxed{x+1} \) and \( y_2 = \boxed{x-1} \)", Some("x+1, x-1")),
    ("boxes_punctuation_only", r"\boxed{35} ++++++ \boxed{4}", Some("35, 4")),
    ("boxes_linked_by_relation", r"\boxed{\frac12} = \boxed{0.5}", Some("0.5")),
    ("boxes_linked_by_arrow", r"\boxed{3} -> \boxed{4}", Some("4")),
    ("boxes_words_no_separator", r"\boxed{1} no no no no no \boxed{2}", Some("2")),
    ("boxes_revised", r"\boxed{3}, wait, \boxed{4}", Some("4")),
    ("boxes_sentence_between", r"\boxed{3} and that is all. Next \boxed{4}", Some("4")),
    ("boxes_many_words_between", r"\boxed{3} is what we get for a and for b we get \boxed{4}", Some("4")),
    // an over-escaped string with literal `\n` line breaks
    ("doubled_backslashes_literal_newlines", r"so \\boxed{004}.\n\nBut check: \\boxed{004} is it.\n\n**Final Answer**\n\\boxed{004}", Some("004")),
];

/// (name, response, expected format_ok)
#[rustfmt::skip]
const FORMAT: &[(&str, &str, bool)] = &[
    ("minimal", r"<think>r</think><answer>\boxed{1}</answer>", true),
    ("whitespace_between_and_around", "\n <think>\nr\n</think>\n\n<answer> x \\boxed{1} \n</answer>\n", true),
    ("empty_box_is_still_template", r"<think>r</think><answer>\boxed{}</answer>", true),
    ("empty_think_allowed", r"<think></think><answer>\boxed{1}</answer>", true),
    ("no_box", "<think>r</think><answer>1</answer>", false),
    ("box_only_in_think", r"<think>\boxed{1}</think><answer>1</answer>", false),
    ("unbalanced_box", r"<think>r</think><answer>\boxed{1</answer>", false),
    ("text_before_think", r"Sure! <think>r</think><answer>\boxed{1}</answer>", false),
    ("text_between_blocks", r"<think>r</think> so <answer>\boxed{1}</answer>", false),
    ("text_after_answer", r"<think>r</think><answer>\boxed{1}</answer> bye", false),
    ("missing_answer_close", r"<think>r</think><answer>\boxed{1}", false),
    ("missing_think", r"<answer>\boxed{1}</answer>", false),
    ("two_answer_blocks", r"<think>r</think><answer>\boxed{1}</answer><answer>\boxed{2}</answer>", false),
    ("nested_think", r"<think><think>r</think></think><answer>\boxed{1}</answer>", false),
    ("uppercase_tags", r"<THINK>r</THINK><ANSWER>\boxed{1}</ANSWER>", false),
    ("blocks_swapped", r"<answer>\boxed{1}</answer><think>r</think>", false),
];

/// (name, response, reference, options, accuracy, format)
#[rustfmt::skip]
type GradeCase = (&'static str, &'static str, &'static str, Option<&'static [&'static str]>, f32, f32);
#[rustfmt::skip]
const GRADE: &[GradeCase] = &[
    ("mmr1_correct", r"<think>area = 3*4</think><answer>The area is \boxed{12} cm^2.</answer>", "12", None, 1.0, 1.0),
    ("mmr1_wrong", r"<think>area = 3*5</think><answer>\boxed{15}</answer>", "12", None, 0.0, 1.0),
    ("correct_without_template", r"The answer is \boxed{12}.", "12", None, 1.0, 0.0),
    ("no_answer_at_all", "<think>hmm</think><answer></answer>", "12", None, 0.0, 0.0),
    ("think_box_ignored", r"<think>\boxed{3}</think><answer>\boxed{5}</answer>", "3", None, 0.0, 1.0),
    ("option_text_for_letter", r"<think>r</think><answer>\boxed{5 cm}</answer>", "B", Some(&["A. 3 cm", "B. 5 cm"]), 1.0, 1.0),
    ("letter_for_option_text", r"\boxed{B}", "5 cm", Some(&["3 cm", "5 cm"]), 1.0, 0.0),
    ("wrong_letter_with_options", r"\boxed{A}", "B", Some(&["3 cm", "5 cm"]), 0.0, 0.0),
    ("wrong_option_text", r"\boxed{3}", "B", Some(&["(A) 3", "(B) 5"]), 0.0, 0.0),
    ("reference_is_whole_solution", r"<think>r</think><answer>\boxed{2-2p}</answer>", r"Since $x<2$, it follows that $|x-2|=2-x$. If $2-x=p$, then $x=2-p$. Thus $x-p=\boxed{2-2p}$.", None, 1.0, 1.0),
    ("reference_solution_wrong_answer", r"\boxed{2+2p}", r"Since $x<2$, it follows that $|x-2|=2-x$. If $2-x=p$, then $x=2-p$. Thus $x-p=\boxed{2-2p}$.", None, 0.0, 0.0),
    ("reference_solution_matrix", r"\boxed{\begin{bmatrix} 0 & 3 \\ 0 & -1 \end{bmatrix}}", "\\boxed{\n\\begin{pmatrix} 0 & 3 \\\\ 0 & -1 \\end{pmatrix}\n}.\n\\end{align*}", None, 1.0, 0.0),
    ("answer_stated_without_box", r"so the answer is $\frac12$.", "0.5", None, 1.0, 0.0),
    ("prose_number_graded", "the number is not 10 which is 1,000.99\u{20AC}", "1000.99", None, 1.0, 0.0),
    ("prose_earlier_number_not_graded", "the number is 10 which is not 1,000.99\u{20AC}", "10", None, 0.0, 0.0),
    ("matrix_sum_in_prose", r"The sum is $\begin{pmatrix}1 & 2 \\ 3 & 4\end{pmatrix} + \begin{pmatrix}5 & 6 \\ 7 & 8\end{pmatrix}$", r"\begin{pmatrix}6 & 8 \\ 10 & 12\end{pmatrix}", None, 1.0, 0.0),
    ("turn_after_answer", "So the answer is 2/3. <|im_start|>user Is it 5?", "2/3", None, 1.0, 0.0),
    ("turn_after_answer_not_read", "So the answer is 2/3. <|im_start|>user Is it 5?", "5", None, 0.0, 0.0),
    ("very_long_garbage", "", "5", None, 0.0, 0.0), // the response is generated below
];

#[test]
fn equivalence_cases() {
    let failed: Vec<String> = EQUIV
        .iter()
        .filter(|(_, p, r, want)| is_equivalent(p, r) != *want)
        .map(|(name, p, r, want)| format!("{name}: is_equivalent({p:?}, {r:?}) should be {want}"))
        .collect();
    assert!(failed.is_empty(), "{} failures:\n{}", failed.len(), failed.join("\n"));
}

#[test]
fn extraction_cases() {
    let failed: Vec<String> = EXTRACT
        .iter()
        .filter(|(_, text, want)| extract_answer(text).as_deref() != *want)
        .map(|(name, text, want)| {
            format!("{name}: extract_answer({text:?}) = {:?}, want {want:?}", extract_answer(text))
        })
        .collect();
    assert!(failed.is_empty(), "{} failures:\n{}", failed.len(), failed.join("\n"));
}

#[test]
fn format_cases() {
    let failed: Vec<String> = FORMAT
        .iter()
        .filter(|(_, text, want)| format_ok(text) != *want)
        .map(|(name, text, want)| format!("{name}: format_ok({text:?}) should be {want}"))
        .collect();
    assert!(failed.is_empty(), "{} failures:\n{}", failed.len(), failed.join("\n"));
}

#[test]
fn grade_cases() {
    let cfg = RewardConfig::default();
    let garbage: String = "\\boxed{{<answer>}\\frac{".repeat(20_000) + &"é中🙂".repeat(10_000);
    let mut failed = Vec::new();
    for &(name, response, answer, options, acc, fmt) in GRADE {
        let response = if name == "very_long_garbage" { garbage.as_str() } else { response };
        let item = RewardItem {
            answer: answer.to_string(),
            options: options.map(|o| o.iter().map(|s| s.to_string()).collect()),
        };
        let v = cfg.grade(response, &item);
        if (v.accuracy, v.format) != (acc, fmt) {
            failed.push(format!("{name}: got {v:?}, want accuracy {acc} format {fmt}"));
        }
        assert_eq!(cfg.reward(response, &item), acc + fmt, "{name}: total");
    }
    assert!(failed.is_empty(), "{} failures:\n{}", failed.len(), failed.join("\n"));
}

/// Every answer extracted from the cases, boxed again, extracts to itself and is equivalent to
/// itself written differently (`$...$` and a trailing period, stripped by normalisation; the
/// same string would pass by string equality alone).
#[test]
fn extracted_answers_roundtrip() {
    let texts = EXTRACT.iter().map(|c| c.1).chain(GRADE.iter().map(|c| c.1));
    let answers = EQUIV.iter().flat_map(|c| [c.1, c.2]);
    for text in texts.chain(answers) {
        if let Some(x) = extract_answer(text) {
            let again = extract_answer(&format!("\\boxed{{{x}}}"));
            assert_eq!(again.as_deref(), Some(x.as_str()), "roundtrip of {text:?}");
            let spelled = format!("${x}$.");
            assert!(is_equivalent(&spelled, &x), "{spelled:?} not equivalent to {x:?}");
        }
    }
}
