"""The label vocabularies FaceInsight perceives: fixed by the datasets, shared by every layer."""

# CelebA's 40 attributes, in the order of its annotation files.
CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)
ATTRIBUTE_INDEX: dict[str, int] = {name: i for i, name in enumerate(CELEBA_ATTRIBUTES)}

# CelebAMask-HQ parsing classes; the label value is the position, and parts are painted in this order.
PARSING_CLASSES: tuple[str, ...] = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)
# The 18 parts that have mask files (background has none).
MASK_PARTS: tuple[str, ...] = PARSING_CLASSES[1:]
PART_LABEL: dict[str, int] = {name: i for i, name in enumerate(PARSING_CLASSES)}
# Pairs a horizontal flip swaps.
LEFT_RIGHT_PAIRS: tuple[tuple[str, str], ...] = (("l_eye", "r_eye"), ("l_brow", "r_brow"), ("l_ear", "r_ear"))

# UTKFace: gender 0 male, 1 female; race 0..4.
UTK_GENDERS: tuple[str, ...] = ("male", "female")
UTK_RACES: tuple[str, ...] = ("White", "Black", "Asian", "Indian", "Others")
UTK_MAX_AGE = 116

# RAF-DB basic: label value k (1..7) names EXPRESSIONS[k - 1].
EXPRESSIONS: tuple[str, ...] = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")
# the single-label tasks FaceInsight's answer heads cover (model/knowledge_modules.ANSWER_CLASSES: their words)
ANSWER_TASKS: tuple[str, ...] = ("gender", "race", "expression", "age")

# The three evaluation tasks, one per dataset: CelebAMask-HQ's attributes, UTKFace's age / gender / race, RAF-DB's
# expression (the corpus' `task` column; evaluate@<task>, finetune_task@<task>).
TASKS: tuple[str, ...] = ("attributes", "age_gender_race", "expression")
